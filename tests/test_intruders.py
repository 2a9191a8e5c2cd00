"""IntruderTracker on drawn frames: an arm that reaches in from the edge is the intruder, what it puts down is not."""
from __future__ import annotations

import numpy as np
import pytest

from turncrop.tracking.intruders import IntruderOptions, IntruderTracker

H, W = 120, 160
YY, XX = np.mgrid[0:H, 0:W]
SKIN, PRODUCT = (220, 170, 140), (60, 90, 200)


def _frame(arm_tip: int | None, product: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, foreground, arm, product) for an arm from the right edge reaching to x = arm_tip (rows 60-70)
    and a product box at x 50-90, rows 30-80."""
    image = np.full((H, W, 3), 230, np.uint8)
    arm = np.zeros((H, W), bool)
    thing = np.zeros((H, W), bool)
    if product:
        thing[30:80, 50:90] = True
        image[thing] = PRODUCT
    if arm_tip is not None:
        arm[60:70, arm_tip:] = True
        image[arm] = SKIN
    return image, arm | thing, arm, thing & ~arm


def test_an_arm_reaching_in_is_an_intruder_and_what_it_puts_down_is_the_product():
    tracker = IntruderTracker()
    for tip in (150, 135, 120, 105, 92):  # the arm comes in, in steps of a few % of the frame
        image, fg, arm, _ = _frame(tip, product=False)
        found = tracker.update(image, fg, None)
        assert (found >= arm).all() and tracker.present, tip
    image, fg, arm, product = _frame(88, product=True)  # the hand puts the product down
    found = tracker.update(image, fg, None)
    assert found[arm].mean() > 0.95
    assert found[product].mean() < 0.1, found[product].mean()
    for tip in (92, 110, 130, 150):  # the arm leaves; the product's mask protects it
        image, fg, arm, product = _frame(tip, product=True)
        found = tracker.update(image, fg, product)
        assert found[arm].mean() > 0.95 and found[product].mean() < 0.05, tip
    image, fg, _, product = _frame(None, product=True)
    # The first frame without a trace of the arm may still hold its fingertips, too few pixels to see.
    assert not tracker.update(image, fg, product).any() and tracker.present
    assert not tracker.update(image, fg, product).any() and not tracker.present


def test_a_product_that_appears_at_the_frame_edge_is_not_an_intruder():
    # A tall product (the mic at full height) touches the top edge from its first frame on.
    tracker = IntruderTracker()
    image = np.full((H, W, 3), 230, np.uint8)
    fg = np.zeros((H, W), bool)
    fg[0:90, 60:100] = True
    image[fg] = PRODUCT
    assert not tracker.update(image, fg, None).any()


def test_a_hand_moving_over_the_product_is_still_the_hand():
    tracker = IntruderTracker()
    image, fg, _, product = _frame(None, product=True)
    tracker.update(image, fg, product)  # the product alone: its colours are learnt
    for tip in (150, 130, 110, 95):
        image, fg, _, _ = _frame(tip, product=True)
        tracker.update(image, fg, product)
    image, fg, arm, _ = _frame(80, product=True)  # the hand covers the product's right part
    found = tracker.update(image, fg, product)
    assert found[arm].mean() > 0.9
    assert found[product & ~arm].mean() < 0.1


@pytest.mark.parametrize("name", ["entry_depth", "reach", "new_object_area", "min_pixels", "own_colours"])
def test_options_are_checked(name):
    with pytest.raises(ValueError, match=f"intruders.{name}"):
        IntruderOptions(**{name: 1.5})


def test_a_cable_the_hand_touches_stays_the_products_and_the_fingers_stay_the_hands():
    """A gloved hand in the cable's own dark colour touches the product's cable: the hand (and a finger)
    is the intruder, the cable beyond the hand's edge is still the product's."""
    glove, body_colour = (40, 40, 40), PRODUCT
    body = np.zeros((H, W), bool)
    body[20:48, 40:90] = True
    cable = np.zeros((H, W), bool)
    cable[74:92, 80:82] = True  # hangs from where the hand will rest, then runs left under the product
    cable[90:92, 40:82] = True
    product = body | cable

    def frame(tip: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        image = np.full((H, W, 3), 230, np.uint8)
        image[body], image[cable] = body_colour, glove
        arm, finger = np.zeros((H, W), bool), np.zeros((H, W), bool)
        if tip is not None:
            arm[50:74, tip:] = True
            finger[56:62, max(tip - 10, 0):tip] = True
            image[arm | finger] = glove
        return image, product | arm | finger, arm, finger

    tracker = IntruderTracker()
    image, fg, _, _ = frame(None)
    tracker.update(image, fg, product)  # the product alone: its colours are learnt
    for tip in (150, 135, 120, 105, 90, 76, 76, 76, 76, 76):  # it reaches in, then rests on the cable
        image, fg, arm, finger = frame(tip)
        found = tracker.update(image, fg, product)
    assert found[arm].mean() > 0.95 and found[finger].mean() > 0.9
    beyond_the_hand = cable.copy()
    beyond_the_hand[:80] = False  # the strand's first px beside the glove may be taken with its edge
    assert found[beyond_the_hand].mean() < 0.05, found[beyond_the_hand].mean()


def test_a_cable_of_the_product_just_put_down_is_not_the_hands():
    """The frame the hand puts the product down (a stand with a foot, held where the hand meets it): its
    cable, touching the glove and in the glove's colour, is the product's, though no mask protects it yet."""
    glove = (40, 40, 40)
    body = np.zeros((H, W), bool)
    body[20:96, 30:44] = True  # the stand
    body[88:96, 30:80] = True  # its foot
    cable = np.zeros((H, W), bool)
    cable[74:86, 60:62] = True  # hangs from the hand, then runs left above the foot
    cable[84:86, 46:62] = True

    def frame(tip: int, placed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = np.full((H, W, 3), 230, np.uint8)
        arm = np.zeros((H, W), bool)
        arm[50:74, tip:] = True
        fg = arm.copy()
        if placed:
            image[body], image[cable] = PRODUCT, glove
            fg |= body | cable
        image[arm] = glove
        return image, fg, arm

    tracker = IntruderTracker()
    for tip in (150, 135, 120, 105, 90, 75, 60, 50, 44):
        image, fg, _ = frame(tip, placed=False)
        tracker.update(image, fg, None)
    image, fg, arm = frame(40, placed=True)
    found = tracker.update(image, fg, None)
    assert found[arm & (XX >= 48)].mean() > 0.95
    beyond_the_hand = cable & (YY >= 82)
    assert found[beyond_the_hand].mean() < 0.05, found[beyond_the_hand].mean()
    assert found[body & ~arm].mean() < 0.05
