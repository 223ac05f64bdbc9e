"""The prediction server (``ml-assets serve``) on the champions of a tiny pipeline trained here:
every endpoint, answers equal to the kinds' own ``predict``, the switch to a new champion under
load, bad input, Prometheus metrics, bearer tokens and CORS."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port, wait_for

from ml_assets.data.folds import assign_folds
from ml_assets.data.formats import read_dataset
from ml_assets.data.sample import write_sample
from ml_assets.defs.resources import MLAssetsHome
from ml_assets.serve.app import Settings, create_app
from ml_assets.train.classifier import ClassifierConfig
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER
from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR
from ml_assets.train.kinds.yolo_segmenter import YOLO_SEGMENTER, YoloSegmenterConfig
from ml_assets.train.runs import FoldRun, promote, read_lineage, train_fold
from ml_assets.train.yolo import YoloConfig

KINDS = ("image_classifier", "yolo_detector", "yolo_segmenter")
CONFIDENCE = 0.001  # a one-epoch detector's scores are low: ask for its weak boxes too


def champion(paths: MLAssetsHome, kind, ds, config, version: str, make_champion: bool = True):
    """``kind`` trained on every image of ``ds`` (as the final model), exported, promoted."""
    import torch

    assignment = assign_folds(ds, k=2)
    model_dir = paths.model_dir(kind.name, version, None)
    run = FoldRun(
        kind, version, None, config, torch.device("cpu"),
        paths.run_dir(kind.name, version, None), model_dir, tags={"version": version},
    )  # fmt: skip
    train_fold(run, ds, assignment, version, log=lambda _: None)
    kind.export(model_dir, paths.exports_dir(kind.name, version))
    if make_champion:
        promote(kind.name, model_dir, paths.champion_path(kind.name), version, 0.5, None)
    return model_dir


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A home with a classifier, a detector and a segmenter champion (version v1) and a second
    classifier (v2), exported but not promoted yet."""
    root = tmp_path_factory.mktemp("serve")
    ds = read_dataset(write_sample(root / "shapes", 12, seed=5, size=48))
    paths = MLAssetsHome(root=str(root / "home"))
    small = {"img_size": 32, "epochs": 1, "batch_size": 8}
    champion(paths, IMAGE_CLASSIFIER, ds, ClassifierConfig(**small, tta=True), "v1")
    champion(paths, IMAGE_CLASSIFIER, ds, ClassifierConfig(**small, seed=1), "v2", False)
    yolo = {"epochs": 1, "imgsz": 64, "batch": 8, "workers": 0}
    champion(paths, YOLO_DETECTOR, ds, YoloConfig(**yolo), "v1")
    # three epochs: after one, no mask of the tiny segmenter has a positive pixel yet
    champion(paths, YOLO_SEGMENTER, ds, YoloSegmenterConfig(**yolo | {"epochs": 3}), "v1")
    images = sorted((root / "shapes" / "images").glob("*.png"))[:4]
    return paths, images


@pytest.fixture(scope="module")
def server(pipeline):
    """``ml-assets serve`` in a process of its own on a free loopback port."""
    paths, _ = pipeline
    port = free_port()
    command = [sys.executable, "-c", "from ml_assets.cli import main; main()", "serve"]
    options = ["--home", str(paths.path), "--port", str(port), "--poll", "0.2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ML_ASSETS_SERVE_")}
    process = subprocess.Popen([*command, *options, "--max-body-mb", "2"], env=env)
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for("the server to be ready", ready, timeout=120, every=0.3, process=process)
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        process.terminate()
        process.wait(timeout=30)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def files(images) -> list:
    return [("images", (p.name, p.read_bytes(), "image/png")) for p in images]


def metric_samples(client) -> dict:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_health_ready_models_and_docs(server, pipeline):
    paths, _ = pipeline
    assert server.get("/health").json() == {"status": "ok"}
    ready = server.get("/ready").json()
    assert ready["ready"] and ready["kinds"] == dict.fromkeys(KINDS, True)
    models = {m["kind"]: m for m in server.get("/models").json()["models"]}
    assert set(models) == set(KINDS)
    for kind, model in models.items():
        lineage = read_lineage(paths.model_dir(kind, "v1", None))
        onnx = paths.exports_dir(kind, "v1") / "model.onnx"
        assert model["version"] == "v1" and model["fold"] is None  # the final model: every fold
        assert model["fingerprint"] == lineage["fingerprint"]
        assert model["export_hash"] == hashlib.sha256(onnx.read_bytes()).hexdigest()[:16]
        assert model["champion_since"].startswith("20")
    assert models["image_classifier"]["input_size"] == [32, 32]
    assert models["yolo_detector"]["input_size"] == [64, 64]
    assert models["yolo_segmenter"]["input_size"] == [64, 64]
    assert models["yolo_segmenter"]["task"] == "segment"
    assert server.get("/docs").status_code == 200
    assert "/predict/{kind}" in server.get("/openapi.json").json()["paths"]


def test_classifier_answers_as_its_predict(server, pipeline):
    import torch

    paths, images = pipeline
    answer = server.post("/predict/image_classifier", files=files(images))
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "v1"
    body = answer.json()
    assert body["version"] == "v1" and len(body["predictions"]) == len(images)
    model_dir = paths.model_dir("image_classifier", "v1", None)
    expected = IMAGE_CLASSIFIER.predict(model_dir, images, torch.device("cpu"))
    for found, (_, row) in zip(body["predictions"], expected.iterrows(), strict=True):
        assert found["predicted"] == row["predicted"]
        for name, p in found["probabilities"].items():
            assert p == pytest.approx(row[f"p_{name}"], abs=IMAGE_CLASSIFIER.export_tolerance)
    one = server.post(
        "/predict/image_classifier",
        content=images[0].read_bytes(),
        headers={"content-type": "image/png"},
    )
    assert one.json()["predictions"] == body["predictions"][:1]


def yolo_answers(server, paths, kind, images) -> list[tuple]:
    """The server's detections of ``kind`` on ``images`` and ``kind.predict``'s, matched by
    rank of score per image after checking they agree: (image size, mine, its rows) each."""
    import torch

    answer = server.post(
        f"/predict/{kind.name}", files=files(images), params={"confidence": CONFIDENCE}
    )
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    model_dir = paths.model_dir(kind.name, "v1", None)
    expected = kind.predict(model_dir, images, torch.device("cpu"), CONFIDENCE)
    tolerance = kind.export_tolerance
    assert sum(len(p["detections"]) for p in predictions) == len(expected) > 0
    matched = []
    for path, found in zip(images, predictions, strict=True):
        assert (found["width"], found["height"]) == Image.open(path).size
        rows = expected[expected["file"] == str(path)].sort_values("score", ascending=False)
        mine = sorted(found["detections"], key=lambda d: -d["score"])
        assert [d["category_id"] for d in mine] == rows["category_id"].tolist()
        np.testing.assert_allclose(
            [d["box"] for d in mine], rows[["x", "y", "w", "h"]].to_numpy(), atol=10 * tolerance
        )
        np.testing.assert_allclose([d["score"] for d in mine], rows["score"], atol=tolerance)
        assert {d["class"] for d in mine} <= {"circle", "square", "triangle", "cross"}
        matched.append((Image.open(path).size, mine, rows))
    return matched


def test_detector_answers_as_its_predict(server, pipeline):
    paths, images = pipeline
    for _, mine, _ in yolo_answers(server, paths, YOLO_DETECTOR, images):
        assert all("segmentation" not in d for d in mine)


def mask_iou(a: dict, b: dict) -> float:
    from pycocotools import mask as mask_utils

    a, b = (mask_utils.decode({"size": m["size"], "counts": m["counts"].encode()}) for m in (a, b))
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_segmenter_answers_boxes_and_masks_as_its_predict(server, pipeline, tmp_path):
    """Boxes as the detector's; masks (COCO RLE in the image's pixels) decoded from the ONNX
    export's two outputs overlap ``kind.predict``'s (ultralytics in PyTorch) with a mean IoU of
    at least 0.9 over the matched detections; on the sample images and on a wide crop of one,
    which the letterbox pads (the masks are mapped back through that padding)."""
    paths, images = pipeline
    wide = tmp_path / "wide.png"
    Image.open(images[0]).convert("RGB").crop((0, 9, 48, 39)).save(wide)  # 48 x 30
    ious = []
    for (width, height), mine, rows in yolo_answers(server, paths, YOLO_SEGMENTER, [*images, wide]):
        for d, theirs in zip(mine, rows["segmentation"], strict=True):
            assert d["segmentation"]["size"] == [height, width]
            ious.append(mask_iou(d["segmentation"], theirs))
    print(f"segmenter masks: {len(ious)} matched, mean IoU {np.mean(ious):.4f}, "
          f"min {np.min(ious):.4f}")  # fmt: skip
    assert np.mean(ious) >= 0.9


def test_bad_input_is_a_4xx_with_a_message_and_the_server_keeps_serving(server, pipeline):
    _, images = pipeline
    good = images[0].read_bytes()
    big = png(np.zeros((7100, 7100, 3), np.uint8))  # 50.4 megapixels, a few kB as PNG
    raw = {"content-type": "image/png"}
    cases = [
        (dict(content=b"no image at all", headers=raw), 400, "not a readable image"),
        (dict(content=good[: len(good) // 2], headers=raw), 400, "not a readable image"),
        (dict(content=big, headers=raw), 413, "over the limit of 40000000 pixels"),
        (dict(content=good, headers={"content-type": "text/plain"}), 415, "is not accepted"),
        (dict(json={"image": "x"}), 415, "is not accepted"),
        (dict(content=b"", headers=raw), 400, "empty image"),
        (dict(files=files(images * 5)), 413, "too many images: at most 16"),
        (dict(data={"note": "no file"}, files=[]), 415, "is not accepted"),
        (dict(content=b"0" * (3 * 2**20), headers=raw), 413, "request body over the limit"),
    ]
    for request, status, message in cases:
        answer = server.post("/predict/image_classifier", **request)
        assert answer.status_code == status, (request.keys(), answer.text)
        assert message in answer.json()["detail"]
        assert server.get("/health").status_code == 200
    unknown = server.post("/predict/no_such_kind", content=good, headers=raw)
    assert unknown.status_code == 404 and "image_classifier" in unknown.json()["detail"]
    assert server.post("/predict/image_classifier", content=good, headers=raw).status_code == 200


def test_metrics_parse_with_the_prometheus_client(server, pipeline):
    _, images = pipeline
    server.post("/predict/yolo_detector", files=files(images[:2]))
    server.post("/predict/yolo_detector", content=b"x", headers={"content-type": "image/png"})
    samples = metric_samples(server)
    labels = (("kind", "yolo_detector"), ("status", "200"), ("version", "v1"))
    assert samples[("ml_assets_serve_requests_total", labels)] >= 1
    bad = (("kind", "yolo_detector"), ("status", "400"), ("version", "v1"))
    assert samples[("ml_assets_serve_requests_total", bad)] >= 1
    count = (
        "ml_assets_serve_request_seconds_count",
        (("kind", "yolo_detector"), ("version", "v1")),
    )
    assert samples[count] >= 1
    assert samples[("ml_assets_serve_batch_images_sum", (("kind", "yolo_detector"),))] >= 2
    for kind in KINDS:
        info = [
            k for k in samples if k[0] == "ml_assets_serve_model_info" and (("kind", kind) in k[1])
        ]
        assert len(info) == 1 and ("version", "v1") in info[0][1]
        assert (
            samples[("ml_assets_serve_model_load_seconds", (("kind", kind), ("version", "v1")))] > 0
        )


def test_the_server_follows_promotion_without_a_failed_request(server, pipeline):
    paths, images = pipeline
    body, failures, versions, stop = images[0].read_bytes(), [], [], threading.Event()

    def client():
        with httpx.Client(base_url=str(server.base_url), timeout=30) as c:
            while not stop.is_set():
                answer = c.post("/predict/image_classifier", content=body,
                                headers={"content-type": "image/png"})  # fmt: skip
                if answer.status_code != 200:
                    failures.append(answer.text)
                else:
                    versions.append(answer.json()["version"])

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for("requests on v1", lambda: len(versions) > 3, timeout=30, every=0.05)
        model_dir = paths.model_dir("image_classifier", "v2", None)
        promote("image_classifier", model_dir, paths.champion_path("image_classifier"), "v2",
                0.6, None)  # fmt: skip
        wait_for("answers from v2", lambda: "v2" in versions[-3:], timeout=30, every=0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures == []
    switched = versions.index("v2")
    assert set(versions[:switched]) == {"v1"} and set(versions[switched:]) == {"v2"}
    models = {m["kind"]: m for m in server.get("/models").json()["models"]}
    assert models["image_classifier"]["version"] == "v2"
    samples = metric_samples(server)
    info = [k[1] for k in samples if k[0] == "ml_assets_serve_model_info"]
    assert any(("version", "v2") in k and ("kind", "image_classifier") in k for k in info)
    assert not any(("version", "v1") in k and ("kind", "image_classifier") in k for k in info)
    assert samples[("ml_assets_serve_model_switches_total", (("kind", "image_classifier"),))] == 1
    v2 = (("kind", "image_classifier"), ("status", "200"), ("version", "v2"))
    assert samples[("ml_assets_serve_requests_total", v2)] >= 1


# --- in this process (Starlette's TestClient): access, CORS, the timeout, the command --------


def in_process(pipeline, **settings):
    from fastapi.testclient import TestClient

    paths, _ = pipeline
    app = create_app(Settings(home=paths.path, kinds=["yolo_detector"], poll=0, **settings))
    return TestClient(app)


def test_tokens_401_without_200_with_and_counted(pipeline, tmp_path):
    from ml_assets.serve.cli import settings_for

    _, images = pipeline
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# team\n{hashlib.sha256(b's3cret').hexdigest()}\n")
    settings = settings_for(pipeline[0].path, ("yolo",), tokens=token_file)
    body = {"content": images[0].read_bytes(), "headers": {"content-type": "image/png"}}
    with in_process(pipeline, token_hashes=settings.token_hashes) as client:
        assert client.post("/predict/yolo_detector", **body).status_code == 401
        wrong = {"authorization": "Bearer nope", "content-type": "image/png"}
        answer = client.post("/predict/yolo_detector", content=body["content"], headers=wrong)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert client.get("/models").status_code == 401
        good = {"authorization": "Bearer s3cret", "content-type": "image/png"}
        assert (
            client.post("/predict/yolo_detector", content=body["content"], headers=good).status_code
            == 200
        )
        assert client.get("/models", headers=good).status_code == 200
        for path in ("/health", "/ready", "/metrics"):
            assert client.get(path).status_code == 200
        samples = metric_samples(client)
    assert samples[("ml_assets_serve_unauthorized_total", (("path", "/predict"),))] == 2
    assert samples[("ml_assets_serve_unauthorized_total", (("path", "/models"),))] == 1
    with in_process(pipeline, token_hashes=settings.token_hashes, open_paths=("/health",)) as c:
        assert c.get("/metrics").status_code == 401 and c.get("/health").status_code == 200
    (tmp_path / "bad").write_text("not-a-digest\n")
    with pytest.raises(ValueError, match="not a SHA-256 hex digest"):
        settings_for(pipeline[0].path, ("yolo",), tokens=tmp_path / "bad")


def test_cors_is_off_unless_origins_are_set(pipeline):
    origin = {"origin": "https://ui.example", "access-control-request-method": "POST"}
    with in_process(pipeline) as client:
        assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    with in_process(pipeline, cors_origins=["https://ui.example"]) as client:
        answer = client.options("/predict/yolo_detector", headers=origin)
        assert answer.headers["access-control-allow-origin"] == "https://ui.example"


def test_a_request_past_the_timeout_is_a_504(pipeline):
    _, images = pipeline
    with in_process(pipeline, timeout=1e-6) as client:
        answer = client.post("/predict/yolo_detector", files=files(images))
        assert answer.status_code == 504 and "no answer within" in answer.json()["detail"]
        assert client.get("/health").status_code == 200


def test_the_command_refuses_what_it_cannot_serve(tmp_path, pipeline):
    from ml_assets.serve.cli import settings_for

    with pytest.raises(ValueError, match="no kind has a champion"):
        settings_for(tmp_path, ())
    with pytest.raises(ValueError, match="unknown model kind"):
        settings_for(tmp_path, ("nope",))
    assert settings_for(pipeline[0].path, ()).kinds == list(KINDS)


def test_serving_never_imports_pytorch(pipeline):
    code = (
        "import sys; from ml_assets.serve.models import load_champion; import numpy as np\n"
        "for kind in ('yolo_detector', 'yolo_segmenter'):\n"
        f"    m = load_champion({str(pipeline[0].path)!r}, kind)\n"
        "    m.predict([np.zeros((40, 50, 3), np.uint8)], confidence=0.0)\n"
        "print(sorted(k for k in ('torch', 'ultralytics', 'timm') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_not_ready_without_a_champion_and_the_old_model_kept_until_the_new_export(
    pipeline, tmp_path
):
    import shutil

    from fastapi.testclient import TestClient

    from ml_assets.serve.models import Champions

    paths, images = pipeline
    app = create_app(Settings(home=paths.path, kinds=["lora_classifier"], poll=0))
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 503
        answer = client.post("/predict/lora_classifier", content=images[0].read_bytes(),
                             headers={"content-type": "image/png"})  # fmt: skip
        assert answer.status_code == 503 and "no champion yet" in answer.json()["detail"]
    home = MLAssetsHome(root=str(tmp_path / "home"))
    shutil.copytree(paths.path / "models", home.path / "models")
    shutil.copytree(paths.path / "exports", home.path / "exports")
    champions = Champions(home.path, ["image_classifier"], poll=0)
    champions.refresh()
    served = champions.models["image_classifier"]
    model_dir = home.model_dir("image_classifier", "v2", None)
    promote("image_classifier", model_dir, home.champion_path("image_classifier"), "v9", 0.7, None)
    champions.refresh()  # promoted, not exported yet: the old model stays
    assert champions.models["image_classifier"] is served
    assert "export.json" in champions.errors["image_classifier"]
