from pathlib import Path
from pydicom.data import get_testdata_file
from tests.cluster import dataset_bytes

def test_smoke(any_cluster, tmp_path):
    files = [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "emri_small_jpeg_2k_lossless.dcm", "SC_rgb_rle.dcm")]
    any_cluster.storescu(*files)
    any_cluster.wait_indexed(5)
    studies = any_cluster.studies()
    assert sum(s["num_instances"] for s in studies) == 5
    for s in studies:
        out = tmp_path / "exp"
        any_cluster.pacs("export", s["study_instance_uid"], "--out", str(out))
    got = {p.name: dataset_bytes(p) for p in (tmp_path / "exp").iterdir()}
    import pydicom
    for f in files:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert got[f"{uid}.dcm"] == dataset_bytes(f), f
