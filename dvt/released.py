"""Where the authors publish the released DVT checkpoints: the links of the official repository's README
(github.com/blackfeather-wang/Dynamic-Vision-Transformer, "Pre-trained Models"). No checksum is
published with them; `dvt train` records the sha256 of what it imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Released:
    file: str  # the file name the links serve
    backbone: str  # our registry name
    timm_name: str  # timm.create_model(...) once dvt.models is imported
    tsinghua: str
    google_drive: str

    def where(self) -> str:
        return f"the authors publish {self.file} at {self.tsinghua} (or {self.google_drive})"


RELEASED = {r.file: r for r in (
    Released("DVT_T2t_vit_12.pth.tar", "t2t_vit_12", "dvt_t2t_vit_12",
             "https://cloud.tsinghua.edu.cn/f/f7987d559f00435caa3d/?dl=1",
             "https://drive.google.com/file/d/1-hu-OMWiwuc8iTd1PV-c8tv6jLZ8EVv9/view?usp=sharing"),
    Released("DVT_T2t_vit_14.pth.tar", "t2t_vit_14", "dvt_t2t_vit_14",
             "https://cloud.tsinghua.edu.cn/f/afda2eec77c7491bbdaf/?dl=1",
             "https://drive.google.com/file/d/1clxKfhbOP1oKBimzoTGogNSSljPHT5WB/view?usp=sharing"),
    Released("DVT_Deit_small.pth.tar", "deit_small", "dvt_deit_small",
             "https://cloud.tsinghua.edu.cn/f/c415017423dd40ab8e72/?dl=1",
             "https://drive.google.com/file/d/1oXDm1LbJhTRgJn3W_aWGV_6uGM3zpZib/view?usp=sharing"),
)}


def where_to_get(path: str | Path) -> str | None:
    """'the authors publish X at URL (or URL)' for a released checkpoint's file name, else None."""
    found = RELEASED.get(Path(path).name)
    return found.where() if found else None


def for_timm_name(name: str) -> Released | None:
    return next((r for r in RELEASED.values() if r.timm_name == name), None)
