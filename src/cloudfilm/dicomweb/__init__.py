"""DICOMweb (PS3.18): STOW-RS, QIDO-RS, WADO-RS and WADO-URI over the archive.

``cloudfilm.dicomweb.routes.build_router(settings)`` returns the FastAPI router the application
includes; the conformance statement is ``docs/dicomweb-conformance.md``.
"""
