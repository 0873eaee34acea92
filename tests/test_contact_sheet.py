"""panseg-rt sheet: pages of image | segments | overlay rows from an infer output folder, without torch."""

import json

import numpy as np
import pytest
from conftest import run_without_torch
from PIL import Image

from runtime.categories import Category, categories_to_json
from runtime.cli import main as runtime_main
from runtime.contact_sheet import cell_origin, page_size
from runtime.errors import PansegError
from runtime.overlay import colorize_panoptic
from runtime.panoptic_format import write_panoptic_png

CATEGORIES = {7: Category(7, "gear wheel", True, (200, 30, 30)), 1000: Category(1000, "floor", False, (90, 90, 200))}
CELL = (40, 30)
IMAGE_SIZE = (60, 40)  # width, height: fits a 40x30 box as 40x27 (aspect kept)


def image_color(k: int) -> tuple[int, int, int]:
    return (20 + 40 * k, 250 - 40 * k, 60 + 25 * k)


def segments() -> list[dict]:
    return [{"id": 1, "category_id": 1000, "isthing": False, "area": 1200},
            {"id": 2, "category_id": 7, "isthing": True, "area": 1200, "bbox": [30, 0, 30, 40], "score": 0.9}]


def id_map() -> np.ndarray:
    ids = np.ones((IMAGE_SIZE[1], IMAGE_SIZE[0]), np.int64)
    ids[:, 30:] = 2
    return ids


def infer_folder(tmp_path, count: int):
    """An infer output folder as panseg-rt infer writes it: predictions.json, records/, panoptic/."""
    out = tmp_path / "infer"
    (out / "records").mkdir(parents=True)
    annotations = []
    for k in range(count):
        image = tmp_path / "images" / f"img{k}.png"
        image.parent.mkdir(exist_ok=True)
        Image.new("RGB", IMAGE_SIZE, image_color(k)).save(image)
        write_panoptic_png(out / "panoptic" / f"img{k}.png", id_map())
        annotation = {"image_id": k, "file_name": f"img{k}.png", "segments_info": segments()}
        annotations.append(annotation)
        (out / "records" / f"img{k}.json").write_text(json.dumps(
            {"annotation": annotation, "input": str(image), "settings": {"exif": True}}))
    (out / "predictions.json").write_text(json.dumps({"annotations": annotations,
                                                      "categories": categories_to_json(CATEGORIES)}))
    return out


def pixel(page: Image.Image, row: int, column: int, dx: int, dy: int) -> tuple[int, int, int]:
    x, y = cell_origin(row, column, CELL)
    return page.getpixel((x + dx, y + dy))


def test_pages_hold_the_right_images_in_rows_of_three(tmp_path, capsys):
    out = infer_folder(tmp_path, 5)
    assert runtime_main(["sheet", str(out), "-o", str(tmp_path / "sheets"), "--rows", "2", "--cell", "30x40"]) == 0
    pages = sorted((tmp_path / "sheets").glob("*.png"))
    assert [p.name for p in pages] == ["sheet_001.png", "sheet_002.png", "sheet_003.png"]
    assert capsys.readouterr().out == f"wrote 3 pages: {pages[0]} ... sheet_003.png\n"
    sizes = [Image.open(p).size for p in pages]
    assert sizes == [(3 * 48 + 8, 2 * (18 + 30 + 8) + 8)] * 2 + [(152, 64)] == [page_size(2, CELL)] * 2 + [
        page_size(1, CELL)]
    colored = colorize_panoptic(id_map(), segments(), CATEGORIES, distinct_instances=True, vivid_stuff=True)
    for k in range(5):
        page = Image.open(pages[k // 2]).convert("RGB")
        row = k % 2
        # the picture is 40x27, centred in the 40x30 box: rows 1..28 hold it
        assert pixel(page, row, 0, 20, 15) == image_color(k)
        assert pixel(page, row, 0, 20, 0) == (32, 32, 32)  # background above the picture
        assert pixel(page, row, 1, 5, 15) == tuple(colored[20, 5])  # stuff half in the segment colours
        assert pixel(page, row, 1, 35, 15) == tuple(colored[20, 55])  # thing half
        overlay = pixel(page, row, 2, 5, 15)
        assert overlay != image_color(k) and overlay != tuple(colored[20, 5])  # blended, neither alone


def test_bad_folders_give_one_line(tmp_path, capsys):
    assert runtime_main(["sheet", str(tmp_path / "nothing"), "-o", str(tmp_path / "s")]) == 1
    assert capsys.readouterr().err == (f"panseg-rt sheet: error: {tmp_path / 'nothing'}: no such folder (give the "
                                       "--output folder of panseg-rt infer)\n")
    out = infer_folder(tmp_path, 1)
    (tmp_path / "images" / "img0.png").unlink()
    assert runtime_main(["sheet", str(out), "-o", str(tmp_path / "s")]) == 1
    assert capsys.readouterr().err == f"panseg-rt sheet: error: {tmp_path / 'images' / 'img0.png'}: no such file\n"
    with pytest.raises(SystemExit) as exited:  # a malformed shape is a usage error, as everywhere (HxW)
        runtime_main(["sheet", str(out), "-o", str(tmp_path / "s"), "--cell", "40"])
    assert exited.value.code == 2 and "HxW" in capsys.readouterr().err


def test_a_png_of_another_size_is_named(tmp_path):
    from runtime.contact_sheet import write_contact_sheets

    out = infer_folder(tmp_path, 1)
    write_panoptic_png(out / "panoptic" / "img0.png", np.ones((10, 10), np.int64))
    with pytest.raises(PansegError, match=r"img0.png: PNG is 10x10, its image .*img0.png is 60x40"):
        write_contact_sheets(out, tmp_path / "s")


def test_sheets_need_no_torch(tmp_path):
    out = infer_folder(tmp_path, 2)
    done = run_without_torch(f"""
        from runtime.cli import main
        raise SystemExit(main(["sheet", {str(out)!r}, "-o", {str(tmp_path / 'lean')!r}]))
    """)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "lean" / "sheet_001.png").size == page_size(2, (480, 360))
