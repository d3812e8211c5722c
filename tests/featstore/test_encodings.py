"""Round trips of every encoding on synthetic rows with huge outlier channels, and why standardisation is on."""
from __future__ import annotations

import numpy as np
import pytest

from featstore.store.encoding import CODED, code_problems, decode, encode, from_stored, storable

OUTLIERS = [3, 77, 5]


def rows(n: int = 1500, d: int = 256, seed: int = 0) -> np.ndarray:
    """(n, d) unit-normal rows plus three channels with large, nearly constant values (as in real encoders)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, OUTLIERS[:2]] = 100 + 3 * rng.standard_normal((n, 2))
    x[:, OUTLIERS[2]] = -40 + rng.standard_normal(n)
    return x


def rel_errors(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(relative error on the ordinary channels, on whole rows)."""
    ok = np.ones(x.shape[1], bool)
    ok[OUTLIERS] = False
    return (float(np.linalg.norm((y - x)[:, ok]) / np.linalg.norm(x[:, ok])),
            float(np.linalg.norm(y - x) / np.linalg.norm(x)))


def round_trip(x: np.ndarray, enc: str, standardise: bool = True) -> np.ndarray:
    e = encode(x, enc, standardise)
    return decode(e[""], enc, e["_scale"], e["_shift"], e["_gain"])


@pytest.mark.parametrize("enc,bound_ordinary,bound_all", [("int8", 0.01, 0.002), ("fp8", 0.035, 0.005)])
def test_round_trip_error_bounds(enc: str, bound_ordinary: float, bound_all: float) -> None:
    x = rows()
    e = encode(x, enc)
    assert e[""].dtype == (np.int8 if enc == "int8" else np.uint8) and e[""].shape == x.shape
    assert e["_scale"].shape == (len(x),) and e["_shift"].shape == e["_gain"].shape == (x.shape[1],)
    y = round_trip(x, enc)
    assert y.dtype == np.float32
    ordinary, whole = rel_errors(x, y)
    assert ordinary < bound_ordinary and whole < bound_all, (ordinary, whole)
    assert code_problems(e[""], enc, e["_scale"], e["_shift"], e["_gain"]) == []


def test_standardisation_is_needed_for_int8_and_helps_fp8() -> None:
    """Per-row absmax alone spends int8's range on the outliers: the ordinary channels lose ~30x precision."""
    x = rows()
    plain, std = rel_errors(x, round_trip(x, "int8", False)), rel_errors(x, round_trip(x, "int8", True))
    assert plain[0] > 0.15 and std[0] < 0.01
    plain, std = rel_errors(x, round_trip(x, "fp8", False)), rel_errors(x, round_trip(x, "fp8", True))
    assert std[1] < plain[1] / 3


@pytest.mark.parametrize("enc", CODED)
def test_edge_rows(enc: str) -> None:
    """All-zero rows, one row, constant channels, and no rows at all decode exactly or within bounds."""
    x = np.zeros((4, 8), np.float32)
    x[1] = 5.0
    assert np.allclose(round_trip(x, enc), x)
    one = np.arange(8, dtype=np.float32)[None]
    assert np.allclose(round_trip(one, enc), one)  # one row: standardised to zero, the shift carries it
    e = encode(np.zeros((0, 8), np.float32), enc)
    assert decode(e[""], enc, e["_scale"], e["_shift"], e["_gain"]).shape == (0, 8)
    big = rows(50) * 1e4  # beyond float16's range: 8-bit codes with float32 scales still hold it
    assert rel_errors(big, round_trip(big, enc))[1] < 0.01


def test_fp8_matches_torch_float8() -> None:
    """The numpy e4m3fn table and rounding agree with torch's float8_e4m3fn cast."""
    torch = pytest.importorskip("torch")
    v = np.random.default_rng(1).uniform(-448, 448, 20000).astype(np.float32)
    e = encode(v[None], "fp8", standardise=False)
    q = v / e["_scale"][0]
    ours = decode(e[""], "fp8", e["_scale"], e["_shift"], e["_gain"])[0]
    theirs = torch.from_numpy(q).to(torch.float8_e4m3fn).float().numpy() * e["_scale"][0]
    assert np.allclose(ours, theirs, rtol=1e-6, atol=0)


def test_code_problems_named() -> None:
    x = rows(20, 128)
    e = encode(x, "int8")
    bad = e["_scale"].copy()
    bad[3] = np.inf
    assert code_problems(e[""], "int8", bad, e["_shift"], e["_gain"]) == ["scales not finite and positive"]
    codes = e[""].copy()
    codes[0, 0] = -128
    assert "codes out of range (-128)" in code_problems(codes, "int8", e["_scale"], e["_shift"], e["_gain"])
    f = encode(x, "fp8")
    codes = f[""].copy()
    codes[1, 1] = 0x7F
    assert code_problems(codes, "fp8", f["_scale"], f["_shift"], f["_gain"]) == ["NaN codes"]


def test_float_encodings_unchanged() -> None:
    x = rows(10, 128)
    assert storable(x, "float32")[""] is x
    b = storable(x.astype(np.float16), "float16")[""]
    assert b.dtype == np.float16
