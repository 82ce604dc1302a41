"""The contact sheet: pages of numbered thumbnails, removed files framed red."""
from emma_core.emu.curate import contact_sheet, curate_folder


def test_contact_sheet_pages(folder):
    result = curate_folder(folder)
    pages = contact_sheet(result, columns=4, thumb=64, per_page=8)
    assert len(pages) == 2 and pages[0].size == pages[1].size == (4 * 72, 2 * (72 + 28))
    # a removed image is framed red, a kept one green (first cell: broken.png, removed)
    assert pages[0].getpixel((2, 2))[0] > 200 and pages[0].getpixel((2, 2))[1] < 80
