"""Download the 600-image Fashionista/CSC420 set into a folder the framework reads.

    python scripts/download_data.py --out data/fashionista-csc420

Source: github.com/Garykn/CSC420-Image_Processing_Course_Project at a pinned commit
(folders images/, labels/ and labels.txt), adapted from Yamaguchi et al., "Parsing Clothing in
Fashion Photographs", CVPR 2012. For research use; cite the paper.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

REPO = "Garykn/CSC420-Image_Processing_Course_Project"
COMMIT = "62e035e8c3a885e82e28e9dbba0b6f1a0f40fc53"
URL = f"https://github.com/{REPO}/archive/{COMMIT}.tar.gz"
KEEP = ("images/", "labels/", "labels.txt")


def extract(archive: bytes, out: Path) -> int:
    """Extract images/, labels/ and labels.txt from a GitHub archive (top folder stripped); returns file count."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            rel = member.name.split("/", 1)[1] if "/" in member.name else ""
            if not member.isfile() or not rel.startswith(KEEP) or ".." in Path(rel).parts:
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            count += 1
    return count


def check(out: Path) -> str:
    images = len(list((out / "images").glob("*.jpg")))
    labels = len(list((out / "labels").glob("*.png")))
    if images != 600 or labels != 1200:
        raise SystemExit(f"Expected 600 images and 1200 label maps in {out}, found {images} and {labels}.")
    return f"{images} images, {labels} label maps in {out}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/fashionista-csc420"))
    args = parser.parse_args()
    if (args.out / "images").is_dir():
        print(check(args.out), "(already there)")
        return
    print(f"Downloading {URL} ...", file=sys.stderr)
    try:
        with urllib.request.urlopen(URL, timeout=120) as response:
            archive = response.read()
    except OSError as e:
        raise SystemExit(f"Download failed ({e}). Fetch {URL} by hand and copy its images/, labels/ and "
                         f"labels.txt into {args.out}.") from e
    extract(archive, args.out)
    print(check(args.out))
    print(f"Point the framework at it: export FASHIONSEG_DATA={args.out.resolve()}")


if __name__ == "__main__":
    main()
