"""DICOMDIR (PS3.3 Annex F): records, links between them, invented keys, character sets.

The files a DICOMDIR lists are written to a temporary folder so that pydicom's ``FileSet`` (which
follows the record offsets and checks every referenced file) and DCMTK read the result.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cloudfilm.dicom.dicomdir import DicomDirBuilder, check_file_id, header_from_json
from cloudfilm.dicom.json import header_json
from cloudfilm.dicom.synth import generate_studies


def _write_file_set(root: Path, datasets: list[Dataset], builder: DicomDirBuilder) -> None:
    for number, ds in enumerate(datasets, 1):
        file_id = ("DICOM", "PT000001", "ST000001", "SE000001", f"IM{number:06d}")
        path = root.joinpath(*file_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        builder.add(ds, file_id, str(ds.file_meta.TransferSyntaxUID))
    (root / "DICOMDIR").write_bytes(builder.encode())


def _records(path: Path) -> list[Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(pydicom.dcmread(path).DirectoryRecordSequence)


def test_two_patients_two_studies_are_linked_by_offsets(tmp_path: Path) -> None:
    a = list(generate_studies(seed=1, slices=2, rows=16, columns=16, studies_per_patient=2))
    b = list(generate_studies(seed=2, slices=3, rows=16, columns=16))
    builder = DicomDirBuilder()
    _write_file_set(tmp_path, a + b, builder)
    fs = FileSet(tmp_path / "DICOMDIR")
    assert len(fs) == 7
    assert {i.SOPInstanceUID for i in fs} == {ds.SOPInstanceUID for ds in a + b}
    for instance in fs:  # FileSet found each file through the record tree
        assert Path(instance.path).is_file()
        assert pydicom.dcmread(instance.path).SOPInstanceUID == instance.SOPInstanceUID
    patients = fs.find_values("PatientID")
    assert sorted(patients) == sorted({a[0].PatientID, b[0].PatientID})
    assert len(fs.find_values("StudyInstanceUID")) == 3
    types = [r.DirectoryRecordType for r in _records(tmp_path / "DICOMDIR")]
    assert types.count("PATIENT") == 2 and types.count("STUDY") == 3
    assert types.count("SERIES") == 3 and types.count("IMAGE") == 7


def test_offsets_point_at_records(tmp_path: Path) -> None:
    datasets = list(generate_studies(seed=3, slices=3, rows=16, columns=16))
    builder = DicomDirBuilder()
    _write_file_set(tmp_path, datasets, builder)
    data = (tmp_path / "DICOMDIR").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    first = ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity
    # An offset is the position of the record's Item tag, counted from the file's first byte.
    assert data[first : first + 4] == b"\xfe\xff\x00\xe0"
    records = ds.DirectoryRecordSequence
    patient, study, series = records[0], records[1], records[2]
    assert patient.DirectoryRecordType == "PATIENT"
    lower = patient.OffsetOfReferencedLowerLevelDirectoryEntity
    assert data[lower : lower + 4] == b"\xfe\xff\x00\xe0"
    assert study.OffsetOfReferencedLowerLevelDirectoryEntity > lower
    images = [r for r in records if r.DirectoryRecordType == "IMAGE"]
    assert [r.OffsetOfTheNextDirectoryRecord == 0 for r in images] == [False, False, True]
    assert series.OffsetOfReferencedLowerLevelDirectoryEntity > 0


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="needs DCMTK's dcmdump")
def test_dcmtk_reads_the_directory(tmp_path: Path) -> None:
    datasets = list(generate_studies(seed=4, slices=2, rows=16, columns=16, charset="gb18030"))
    _write_file_set(tmp_path, datasets, DicomDirBuilder())
    out = subprocess.run(
        ["dcmdump", "-q", "+U8", str(tmp_path / "DICOMDIR")], capture_output=True, check=True
    )
    text = out.stdout.decode("utf-8")
    assert "DirectoryRecordType" in text and "IM000002" in text
    assert str(datasets[0].PatientName).split("=")[1].replace("^", "") in text.replace("^", "")
    assert b"E:" not in out.stderr


def test_missing_type1_keys_are_invented(tmp_path: Path) -> None:
    ds = next(generate_studies(seed=5, slices=1, rows=16, columns=16))
    for keyword in ("StudyID", "StudyTime", "SeriesNumber", "InstanceNumber", "PatientID"):
        delattr(ds, keyword)
    ds.StudyDate = ""
    builder = DicomDirBuilder()
    _write_file_set(tmp_path, [ds], builder)
    fs = FileSet(tmp_path / "DICOMDIR")
    assert len(fs) == 1
    patient, study, series, image = _records(tmp_path / "DICOMDIR")
    assert patient.PatientID and study.StudyID == "1" and series.SeriesNumber == 1
    assert len(study.StudyDate) == 8 and len(study.StudyTime) >= 6
    assert image.InstanceNumber == 1


def test_chinese_names_from_the_index_are_written_utf8(tmp_path: Path) -> None:
    datasets = list(generate_studies(seed=6, slices=1, rows=16, columns=16, charset="ir58"))
    original = datasets[0]
    header = header_from_json(header_json(original))  # as the archive caches it
    builder = DicomDirBuilder()
    builder.add(header, ("DICOM", "IM000001"), str(original.file_meta.TransferSyntaxUID))
    (tmp_path / "DICOMDIR").write_bytes(builder.encode())
    patient = _records(tmp_path / "DICOMDIR")[0]
    assert patient.SpecificCharacterSet == "ISO_IR 192"
    assert str(patient.PatientName) == str(original.PatientName)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in str(patient.PatientName))


def test_report_objects_get_their_record_types() -> None:
    builder = DicomDirBuilder()
    sr = Dataset()
    sr.PatientID = "P1"
    sr.StudyInstanceUID, sr.SeriesInstanceUID = generate_uid(), generate_uid()
    sr.SOPClassUID, sr.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.33", generate_uid()
    sr.Modality, sr.StudyDate, sr.StudyTime = "SR", "20240101", "120000"
    sr.CompletionFlag, sr.VerificationFlag = "COMPLETE", "UNVERIFIED"
    sr.ContentDate, sr.ContentTime, sr.InstanceNumber = "20240101", "120000", 1
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "18748-4", "LN", "Report"
    sr.ConceptNameCodeSequence = [code]
    builder.add(sr, ("DICOM", "SR000001"), ExplicitVRLittleEndian)
    pdf = Dataset()
    pdf.update(sr)
    pdf.SOPClassUID, pdf.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.104.1", generate_uid()
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    builder.add(pdf, ("DICOM", "DOC00001"), ExplicitVRLittleEndian)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = pydicom.dcmread(io.BytesIO(builder.encode())).DirectoryRecordSequence
    types = [r.DirectoryRecordType for r in records]
    assert types == ["PATIENT", "STUDY", "SERIES", "SR DOCUMENT", "ENCAP DOC"]
    assert records[3].CompletionFlag == "COMPLETE"
    assert records[4].MIMETypeOfEncapsulatedDocument == "application/pdf"


@pytest.mark.parametrize(
    "file_id",
    [(), ("dicom",), ("DICOM", "IMAGE.DCM"), ("TOOLONGNAME",), ("A",) * 9, ("DICOM", "")],
)
def test_file_ids_must_suit_iso9660_media(file_id: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        check_file_id(file_id)


def test_good_file_id_passes() -> None:
    check_file_id(("DICOM", "PT000001", "ST000001", "SE000001", "IM000001"))
