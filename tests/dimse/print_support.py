"""DCMTK's print tools as real peers: a ``dcmpstat.cfg`` written by the test, ``dcmprscp`` as a
film printer (it keeps what it prints as Stored Print and Hardcopy Grayscale Image objects in
its database folder), ``dcmpsprt`` + ``dcmprscu`` as a modality that prints.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from dimse_support import Dcmtk, dcmtk_env, free_port

#: What the printers of the configuration say they can do (dcmpsprt checks a job against it).
CAPABILITIES = """\
DisableNewVRs = false
DisplayFormat = 1,1\\1,2\\2,1\\2,2\\2,3\\3,2\\3,3\\3,4\\4,3\\4,4\\4,5\\5,4
FilmSizeID = 8INX10IN\\10INX12IN\\11INX14IN\\14INX14IN\\14INX17IN\\24CMX30CM\\A3
FilmDestination = MAGAZINE\\PROCESSOR
MediumType = PAPER\\CLEAR FILM\\BLUE FILM
MagnificationType = REPLICATE\\BILINEAR\\CUBIC\\NONE
BorderDensity = BLACK\\WHITE
EmptyImageDensity = BLACK\\WHITE
ImplicitOnly = false
MaxDensity = 320
MinDensity = 20
MaxPDU = 65536
Supports12Bit = true
SupportsPresentationLUT = false
SupportsImageSize = false
SupportsDecimateCrop = false
SupportsTrim = false
OmitSOPClassUIDFromCreateResponse = false
PresentationLUTMatchRequired = false
PresentationLUTinFilmSession = false
"""


@dataclass(frozen=True)
class PrinterSection:
    """One printer of the configuration: ``LOCALPRINTER`` (served by dcmprscp) or
    ``PRINTER`` (a remote Print SCP, such as cloudfilm, that dcmprscu prints to)."""

    name: str
    ae_title: str
    port: int
    kind: str = "PRINTER"


def write_config(folder: Path, printers: list[PrinterSection], *, calling_ae: str) -> Path:
    """A ``dcmpstat.cfg`` in ``folder`` (with its database and spool folders); its path."""
    for sub in ("database", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    sections = "".join(
        f"[{p.name}]\nAetitle = {p.ae_title}\nDescription = {p.name}\n"
        f"Hostname = localhost\nPort = {p.port}\nType = {p.kind}\n{CAPABILITIES}\n"
        for p in printers
    )
    text = f"""[[GENERAL]]
[APPLICATION]
LogDirectory = {folder / "log"}
LogFile = general.log
LogLevel = WARN
[PRINT]
Spooler = dcmprscu
Server = dcmprscp
Directory = {folder / "spool"}
DetailedLog = false
BinaryLog = false
Sleep = 1
MinPrintResolution = 128\\128
MaxPrintResolution = 8192\\8192
DeletePrintJobs = false
AlwaysDeleteTerminateJobs = false
[DATABASE]
Directory = {folder / "database"}
[NETWORK]
aetitle = {calling_ae}
[[COMMUNICATION]]
{sections}"""
    path = folder / "dcmpstat.cfg"
    path.write_text(text)
    return path


@dataclass
class FilmPrinter:
    """dcmprscp serving one LOCALPRINTER: a real film printer for the tests."""

    ae_title: str
    port: int
    database: Path
    process: subprocess.Popen[bytes]

    def printed(self) -> list[pydicom.Dataset]:
        """The Hardcopy Grayscale Images it received, oldest first."""
        files = sorted(self.database.glob("HG_*.dcm"), key=lambda p: p.stat().st_mtime_ns)
        return [pydicom.dcmread(p) for p in files]

    def stored_prints(self) -> list[pydicom.Dataset]:
        """The Stored Print objects (film session and box attributes), oldest first."""
        files = sorted(self.database.glob("SP_*.dcm"), key=lambda p: p.stat().st_mtime_ns)
        return [pydicom.dcmread(p) for p in files]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


def start_film_printer(
    dcmtk: Dcmtk, folder: Path, ae_title: str = "FILMPRINTER", port: int | None = None
) -> FilmPrinter:
    """dcmprscp on a free (or the given) port, answering C-ECHO once it listens."""
    port = port or free_port()
    cfg = write_config(folder, [PrinterSection("FILM", ae_title, port, "LOCALPRINTER")],
                       calling_ae="TESTSCU")  # fmt: skip
    process = subprocess.Popen(
        [dcmtk.tool("dcmprscp"), "-c", str(cfg), "-p", "FILM"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=folder,
        env=dcmtk_env(),
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if dcmtk.run("echoscu", "-aec", ae_title, "127.0.0.1", port).returncode == 0:
            return FilmPrinter(ae_title, port, folder / "database", process)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("dcmprscp did not start")
