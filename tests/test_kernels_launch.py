"""The fused kernels on a real GPU equal the numpy reference (skipped where no CUDA device is present).

Device memory is handled with cuda.bindings directly (no torch). Outputs are poisoned before every launch
so an element the kernel fails to write cannot pass by accident. Without noise the results must be
bit-exact; with noise, float32 within 2e-6 (device log/sin/cos differ from numpy's by a few ulps) and
float16 within one half-precision ulp, almost always exact.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from nrp_deploy.kernels.reference import postprocess_reference, preprocess_reference

pytestmark = pytest.mark.gpu

SEED = 0x5EED_1234_ABCD_0042
SIGMA, EPS = 0.05, 16 / 255


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    from nrp_deploy.kernels.loader import FusedKernels

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NRP_DEPLOY_CACHE", str(tmp_path_factory.mktemp("cache")))
        fused = FusedKernels(0)
        yield fused
        fused.close()


class DeviceBuffer:
    """A cuMemAlloc'd buffer with a little slack, so tests can offset pointers to break alignment."""

    def __init__(self, nbytes: int) -> None:
        from cuda.bindings import driver

        from nrp_deploy.kernels.cuda_api import check

        self._drv, self._check = driver, check
        self.nbytes = nbytes + 64
        self.base = int(check(driver.cuMemAlloc(self.nbytes), "cuMemAlloc"))

    def upload(self, host: np.ndarray, offset: int = 0) -> int:
        host = np.ascontiguousarray(host)
        self._check(self._drv.cuMemcpyHtoD(self.base + offset, host.ctypes.data, host.nbytes), "cuMemcpyHtoD")
        return self.base + offset

    def download(self, like: np.ndarray, offset: int = 0) -> np.ndarray:
        out = np.empty_like(like)
        self._check(self._drv.cuCtxSynchronize(), "cuCtxSynchronize")
        self._check(self._drv.cuMemcpyDtoH(out.ctypes.data, self.base + offset, out.nbytes), "cuMemcpyDtoH")
        return out

    def poison(self, byte: int = 0xFF) -> None:
        self._check(self._drv.cuMemsetD8(self.base, byte, self.nbytes), "cuMemsetD8")

    def free(self) -> None:
        self._check(self._drv.cuMemFree(self.base), "cuMemFree")


@pytest.fixture
def buffers(kernels):
    made: list[DeviceBuffer] = []

    def make(nbytes: int) -> DeviceBuffer:
        made.append(DeviceBuffer(nbytes))
        return made[-1]

    yield make
    for buf in made:
        buf.free()


def _assert_matches(got: np.ndarray, ref: np.ndarray, noisy: bool) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert np.all(np.isfinite(got)), "unwritten (poisoned) elements"
    if not noisy:
        np.testing.assert_array_equal(got, ref)
        return
    diff = np.abs(got.astype(np.float32) - ref.astype(np.float32))
    if got.dtype == np.float32:
        assert diff.max() <= 2e-6, diff.max()
    else:
        assert diff.max() <= 2.0**-11 + 1e-7, diff.max()  # one float16 ulp in [0.5, 1)
        assert np.mean(diff > 0) < 1e-3


def _run_pre(kernels, buffers, src: np.ndarray, out_dtype: str, noisy: bool, misalign: bool, start: int = 0):
    nchw = (src.shape[0], src.shape[3], src.shape[1], src.shape[2]) if src.dtype == np.uint8 else src.shape
    ref = preprocess_reference(src, out_dtype, SIGMA if noisy else 0.0, EPS, SEED, start)
    sbuf, dbuf = buffers(src.nbytes), buffers(ref.nbytes)
    src_off = (1 if src.dtype == np.uint8 else 4) if misalign else 0
    dst_off = ref.itemsize if misalign else 0
    src_ptr = sbuf.upload(src, src_off)
    dbuf.poison()
    kernels.preprocess(
        src_ptr, dbuf.base + dst_off, nchw[0], nchw[2], nchw[3], out_dtype,
        sigma=SIGMA if noisy else 0.0, eps=EPS, seed=SEED, start_index=start,
        src_dtype=str(src.dtype), channels=nchw[1],
    )  # fmt: skip
    return dbuf.download(ref, dst_off), ref


@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("noisy", [False, True], ids=["plain", "noise"])
@pytest.mark.parametrize(
    ("shape", "misalign"),
    [((4, 224, 224, 3), False), ((3, 64, 48, 3), True), ((2, 37, 53, 3), False), ((2, 9, 7, 1), False)],
    ids=["fast", "misaligned", "odd-size", "one-channel"],
)
def test_preprocess_uint8_matches_reference(kernels, buffers, shape, misalign, noisy, out_dtype):
    src = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    src.reshape(-1)[:6] = [0, 255, 0, 255, 128, 1]
    got, ref = _run_pre(kernels, buffers, src, out_dtype, noisy, misalign, start=7)
    _assert_matches(got, ref, noisy)


@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("noisy", [False, True], ids=["plain", "noise"])
@pytest.mark.parametrize(
    ("shape", "misalign"),
    [((3, 3, 64, 64), False), ((2, 3, 64, 64), True), ((2, 3, 5, 7), False)],
    ids=["vector", "misaligned", "odd-size"],
)
def test_preprocess_float_matches_reference(kernels, buffers, shape, misalign, noisy, out_dtype):
    src = np.random.default_rng(sum(shape)).uniform(-0.1, 1.1, size=shape).astype(np.float32)
    got, ref = _run_pre(kernels, buffers, src, out_dtype, noisy, misalign)
    _assert_matches(got, ref, noisy)


def test_chunked_launches_equal_one_launch(kernels, buffers):
    src = np.random.default_rng(3).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    per_image = 3 * 32 * 32
    sbuf, whole, parts = buffers(src.nbytes), buffers(4 * src.size), buffers(4 * src.size)
    sbuf.upload(src)
    kernels.preprocess(sbuf.base, whole.base, 5, 32, 32, "float32", SIGMA, EPS, SEED, start_index=100)
    for first, count in [(0, 2), (2, 3)]:
        kernels.preprocess(
            sbuf.base + first * per_image, parts.base + 4 * first * per_image, count, 32, 32, "float32",
            SIGMA, EPS, SEED, start_index=100 + first,
        )  # fmt: skip
    like = np.empty((5, 3, 32, 32), np.float32)
    np.testing.assert_array_equal(whole.download(like), parts.download(like))


def test_launch_on_a_stream_from_another_thread(kernels, buffers):
    from cuda.bindings import driver

    from nrp_deploy.kernels.cuda_api import check

    src = np.random.default_rng(4).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    ref = preprocess_reference(src, "float16")
    sbuf, dbuf = buffers(src.nbytes), buffers(ref.nbytes)
    sbuf.upload(src)
    dbuf.poison()
    stream = check(driver.cuStreamCreate(0), "cuStreamCreate")
    errors: list[BaseException] = []

    def work() -> None:
        try:  # a fresh thread has no current context: the launch must make the primary one current
            kernels.preprocess(sbuf.base, dbuf.base, 2, 16, 16, "float16", stream=int(stream))
            check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    check(driver.cuStreamDestroy(stream), "cuStreamDestroy")
    assert not errors, errors
    np.testing.assert_array_equal(dbuf.download(ref), ref)


@pytest.mark.parametrize("src_dtype", ["float16", "float32"])
@pytest.mark.parametrize(
    ("shape", "misalign"),
    [((4, 3, 224, 224), False), ((2, 3, 32, 32), True), ((2, 3, 7, 9), False), ((1, 2, 8, 8), False)],
    ids=["fast", "misaligned", "odd-size", "two-channel"],
)
def test_postprocess_matches_numpy(kernels, buffers, shape, misalign, src_dtype):
    rng = np.random.default_rng(sum(shape))
    x = rng.uniform(-0.2, 1.2, size=shape).astype(np.float32)
    x.reshape(-1)[:512] = (np.arange(512, dtype=np.float32) / np.float32(2)) / np.float32(255)  # .5 ties
    x = x.astype(src_dtype)
    ref = postprocess_reference(x)
    sbuf, dbuf = buffers(x.nbytes), buffers(ref.nbytes)
    src_ptr = sbuf.upload(x, x.itemsize if misalign else 0)
    dst_off = 1 if misalign else 0
    for poison in (0x00, 0xFF):  # every byte value is a valid output: two poisons catch unwritten ones
        dbuf.poison(poison)
        kernels.postprocess(
            src_ptr, dbuf.base + dst_off, shape[0], shape[2], shape[3], src_dtype, channels=shape[1]
        )
        np.testing.assert_array_equal(dbuf.download(ref, dst_off), ref)
