import importlib.util
import io
import tarfile

from conftest import ROOT

spec = importlib.util.spec_from_file_location("download_data", ROOT / "scripts" / "download_data.py")
download_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(download_data)


def make_archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_extract_keeps_only_the_data_folders(tmp_path):
    top = f"CSC420-{download_data.COMMIT}"
    archive = make_archive({
        f"{top}/images/0001.jpg": b"jpg", f"{top}/labels/0001_person.png": b"png", f"{top}/labels.txt": b"0: bg",
        f"{top}/report.pdf": b"pdf", f"{top}/code/train.py": b"py",
    })
    assert download_data.extract(archive, tmp_path) == 3
    assert (tmp_path / "images" / "0001.jpg").read_bytes() == b"jpg"
    assert not (tmp_path / "report.pdf").exists() and not (tmp_path / "code").exists()
