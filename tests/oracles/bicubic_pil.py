# Oracle numbers for tests/augment_ops_test.cpp (AugmentOps.BicubicCropMatchesPil): PIL's bicubic
# resize of a crop, in PIL's float mode ('F': no rounding between its two passes), on a 1-channel
# 6x7 image of scattered levels in 0..255. Cases: a 3x4 crop at (1, 2) enlarged to 5x6; the whole image
# shrunk to 3x4 (PIL widens the filter: antialiasing). Run once with Debian's python3-pil
# (/usr/bin/python3 tests/oracles/bicubic_pil.py); the printed lines are pasted into the test.
from PIL import Image
W, H = 7, 6
levels = [(37 * i * i + 11 * i + 5) % 256 for i in range(W * H)]
img = Image.new("F", (W, H))
img.putdata([float(v) for v in levels])
def case(name, box, size):
    # Crop first, as torchvision's resized_crop does: the filter then sees only the crop
    # (resize's own box= would let taps reach outside it). box: (left, upper, right, lower).
    out = img.crop(box).resize(size, Image.BICUBIC)
    print(name, "= {" + ", ".join("%.9gf" % (v / 255.0) for v in out.getdata()) + "};")
case("kEnlarged", (2, 1, 6, 4), (6, 5))
case("kShrunk", (0, 0, 7, 6), (4, 3))
