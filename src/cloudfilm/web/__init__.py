"""Server-rendered pages shared by the patient page, the viewer and the staff pages.

``i18n`` picks the language (Simplified Chinese or English) and translates; ``templates``
renders Jinja2 templates with autoescaping and the security headers every page carries.
Static files (the viewer's JavaScript and styles) live in ``static/`` and are served at
``/static``.
"""
