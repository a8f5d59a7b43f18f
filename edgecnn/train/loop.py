"""The training loop: build, fit (head, then optional fine-tune), checkpoint every epoch
atomically, resume after a kill, and write the run directory with its model card."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import edgecnn._keras_layers  # noqa: F401  (registers the zoo's custom layers for load_model)
import edgecnn.train._tf  # noqa: F401  (before keras: TensorFlow loads quietly)
from edgecnn import __version__
from edgecnn.card import ModelCard, atomic_write_text
from edgecnn.datasets import Dataset, channel_stats, load_dataset
from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.train.config import TrainConfig
from edgecnn.train.distribute import Distribution, cluster_for, make_distribution
from edgecnn.train.pipeline import make_dataset, steps_per_epoch
from edgecnn.train.precision import precision_policy, resolve_precision
from edgecnn.train.registry import build_model, get_model_spec

log = logging.getLogger(__name__)

__all__ = ["train", "resume", "load_run_model", "RunFiles"]


class RunFiles:
    """Names of the files in a run directory.

    Checkpoints are ``checkpoint-eNNNN.keras``, one name per epoch, and ``state.json`` names the
    current one: a checkpoint only counts once the state file that names it has been written (an
    atomic replace), so a kill between the two leaves the previous epoch's pair intact instead of
    a new model with an old state (issue 11: a hidden extra epoch of optimizer steps).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.model = self.root / "model.keras"
        self.card = self.root / "card.json"
        self.config = self.root / "config.json"
        self.checkpoint = self.root / "checkpoint.keras"  # runs of edgecnn 0.1; read on resume only
        self.state = self.root / "state.json"
        self.history_json = self.root / "history.json"
        self.history_csv = self.root / "history.csv"
        self.curves = self.root / "curves.png"
        self.metrics = self.root / "metrics.json"

    def checkpoint_for(self, epoch: int) -> Path:
        return self.root / f"checkpoint-e{epoch:04d}.keras"

    def checkpoints(self) -> list[Path]:
        return sorted(self.root.glob("checkpoint-e*.keras")) + ([self.checkpoint] if self.checkpoint.exists() else [])

    def current_checkpoint(self, state: dict[str, Any]) -> Path:
        """The checkpoint ``state`` names (``checkpoint.keras`` for runs written before it named one)."""
        return self.root / state["checkpoint"] if state.get("checkpoint") else self.checkpoint


def load_run_model(run: str | Path, *, checkpoint: bool = False) -> keras.Model:
    """Load ``model.keras`` of a run directory (or a .keras file).

    Raises:
        ArtifactError: if it is missing or cannot be deserialized.
    """
    path = Path(run)
    if path.is_dir():
        files = RunFiles(path)
        path = files.current_checkpoint(_read_state(files)) if checkpoint else files.model
    if not path.is_file():
        raise ArtifactError(f"No model at {path}; train one with `edgecnn train --out {Path(run)}`.")
    try:
        return keras.models.load_model(path, compile=checkpoint)
    except Exception as err:  # zip, h5, json and deserialization errors all mean: corrupt
        raise ArtifactError(f"Cannot load {path}: corrupt or not a Keras 3 model ({type(err).__name__}).") from err


def _read_state(files: RunFiles) -> dict[str, Any]:
    """The run's ``state.json``.

    Raises:
        ArtifactError: if it is missing or corrupt.
    """
    try:
        state = json.loads(files.state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{files.root} has no state.json: it is not a run that can be resumed.") from None
    except (ValueError, OSError) as err:
        raise ArtifactError(f"{files.state} is corrupt ({type(err).__name__}); the run cannot be resumed: start it "
                            "again with --overwrite.") from err
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or "history" not in state:
        raise ArtifactError(f"{files.state} is not an edgecnn training state; start the run again with --overwrite.")
    return state


def _save_model_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


# ------------------------------------------------------------------------------------ building

def _build(cfg: TrainConfig, data: Dataset) -> tuple[keras.Model, dict[str, Any]]:
    size = tuple(data.x_train.shape[1:3])
    if cfg.backbone:
        from edgecnn.train.transfer import build_transfer_model

        return build_transfer_model(cfg.backbone, data.num_classes, input_size=size, weights=cfg.weights,
                                    backbone_input_size=cfg.backbone_input_size,
                                    dropout=0.2 if cfg.dropout is None else cfg.dropout)
    kwargs: dict[str, Any] = {}
    if cfg.dropout is not None:
        kwargs["dropout"] = cfg.dropout
    if cfg.width is not None:
        kwargs["width"] = cfg.width
    try:
        model = build_model(cfg.model, data.num_classes, input_size=size, **kwargs)
    except TypeError as err:
        raise ConfigError(f"Model {cfg.model} does not take {', '.join(kwargs)}: {err}.") from err
    except ValueError as err:
        raise ConfigError(f"Cannot build {cfg.model} for {size[0]}x{size[1]} inputs: {err}") from err
    if cfg.normalization == "dataset":
        mean, std = channel_stats(data.x_train)
        pre = {"mean": mean, "std": [max(s, 1e-3) for s in std], "normalization": "dataset"}
    else:
        pre = {"mean": (0.0, 0.0, 0.0), "std": (255.0, 255.0, 255.0), "normalization": "scale"}
    pre.setdefault("channel_order", "RGB")
    _data_init(model, cfg, data, pre)
    return model, pre


def _data_init(model: keras.Model, cfg: TrainConfig, data: Dataset, pre: dict[str, Any]) -> None:
    """Data-dependent initialization, once, before the first epoch (a resumed run has it in its checkpoint)."""
    from edgecnn.train.hooks import WHITEN_BIAS_LAYER, WHITEN_IMAGES, has_whiten_layer, whiten_init

    if cfg.whiten_bias_epochs is not None and not any(layer.name == WHITEN_BIAS_LAYER for layer in model.layers):
        raise ConfigError(f"whiten_bias_epochs needs a model with a '{WHITEN_BIAS_LAYER}' layer (fast_cifar has one); "
                          f"{model.name} has none: remove whiten_bias_epochs from the recipe.")
    if cfg.whiten_init or (cfg.whiten_init is None and has_whiten_layer(model)):
        from edgecnn.runtime.preprocess import normalize_batch

        card = ModelCard(name="init", architecture=cfg.model, class_names=data.class_names,
                         input_size=tuple(data.x_train.shape[1:3]), mean=pre["mean"], std=pre["std"],
                         channel_order=pre["channel_order"])
        whiten_init(model, normalize_batch(data.x_train[:WHITEN_IMAGES], card))


def _schedule(cfg: TrainConfig, lr: float, epochs: int, steps: int):
    total = max(1, epochs * steps)
    warm = int(cfg.warmup_epochs * steps)
    if cfg.schedule == "constant":
        return lr
    if cfg.schedule == "step":
        bounds = [e * steps for e in range(cfg.step_every, epochs, cfg.step_every)]
        if not bounds:
            return lr
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            bounds, [lr * cfg.step_gamma**i for i in range(len(bounds) + 1)])
    if cfg.schedule == "onecycle":
        # One-cycle: linear warm-up from lr/25 to lr over 30% (or warmup_epochs), cosine to ~0.
        warm = warm or int(0.3 * total)
        return keras.optimizers.schedules.CosineDecay(lr / 25, max(1, total - warm), alpha=1e-3,
                                                      warmup_target=lr, warmup_steps=warm)
    if cfg.schedule == "triangle":  # airbench94: 0.2 lr -> lr at 23% (or warmup_epochs) -> 0.07 lr
        from edgecnn._keras_layers import TriangleSchedule

        return TriangleSchedule(lr, total, warm or round(0.23 * total))
    if warm:
        return keras.optimizers.schedules.CosineDecay(0.0, max(1, total - warm), warmup_target=lr, warmup_steps=warm)
    return keras.optimizers.schedules.CosineDecay(lr, total)


def _optimizer(cfg: TrainConfig, lr) -> keras.optimizers.Optimizer:
    wd = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay or 1e-4)
    return keras.optimizers.RMSprop(lr, momentum=cfg.momentum, weight_decay=wd)


def _compile(model: keras.Model, cfg: TrainConfig, lr: float, epochs: int, steps: int, num_classes: int) -> None:
    metrics: list[Any] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5"))
    model.compile(optimizer=_optimizer(cfg, _schedule(cfg, lr, epochs, steps)),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=metrics)


# ------------------------------------------------------------------------------------ callbacks

class _Checkpoint(keras.callbacks.Callback):
    """After every epoch: the model with its optimizer state, then the state file (both atomic)."""

    def __init__(self, files: RunFiles, state: dict[str, Any]) -> None:
        super().__init__()
        self.files, self.state = files, state

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            self.state["history"].setdefault(key, []).append(float(value))
        self.state["history"].setdefault("epoch", []).append(epoch + 1)
        self.state["history"].setdefault("phase", []).append(self.state["phase"])
        self.state["history"].setdefault("time_s", []).append(round(time.time() - self.state["_t0"], 2))
        self.state["epoch"] = epoch + 1
        path = self.files.checkpoint_for(epoch + 1)
        _save_model_atomic(self.model, path)
        self.state["checkpoint"] = path.name
        # The commit point: from here on the new checkpoint is the run's; older ones can go.
        _write_json(self.files.state, {k: v for k, v in self.state.items() if not k.startswith("_")})
        for old in self.files.checkpoints():
            if old != path:
                old.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ running

def _versions() -> dict[str, str]:
    return {"edgecnn": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def train(cfg: TrainConfig, *, overwrite: bool = False, verbose: int | None = None) -> Path:
    """Train ``cfg`` into its run directory; returns the directory.

    Data and model are checked before anything is written, and a run that fails before its
    first checkpoint leaves no directory behind. Under ``--distribute multi-worker`` only the
    chief writes the run directory; the other workers return its path once they are done.

    Raises:
        ConfigError, DataError, ModelNotFoundError, ArtifactError: for bad options or inputs.
        WorkerError: a worker of a multi-worker run never answered or stopped answering.
    """
    name = Path(cfg.backbone).name if cfg.backbone else cfg.model
    if not cfg.backbone:
        get_model_spec(cfg.model)  # unknown names fail before the data is loaded
    run = Path(cfg.out or f"runs/{name}")
    cluster = cluster_for(cfg.distribute)  # multi-worker: a malformed TF_CONFIG fails here
    chief = cluster is None or cluster.is_chief
    if chief and run.exists() and any(run.iterdir()) and not overwrite:
        if not _killed_before_first_checkpoint(run):
            raise ConfigError(f"Run directory {run} exists; pass --out NEW, --overwrite, or resume with `edgecnn train "
                              f"--resume {run}`.")
        log.warning("%s holds a run killed before its first checkpoint (nothing to resume): starting it again.", run)
        overwrite = True
    cfg = cfg.replace(precision=_precision(cfg))  # the run records what it trained in, 'auto' resolved
    keras.utils.set_random_seed(cfg.seed)
    data = _load_data(cfg)
    # Only now the workers meet: one that stopped on an error above would leave the others waiting.
    dist = make_distribution(cfg.distribute, cluster=cluster, batch_size=cfg.batch_size, num_train=len(data.x_train),
                             worker_timeout_s=cfg.worker_timeout)
    with precision_policy(cfg.precision), dist.running(run):
        with dist.scope():
            model, pre = _build(cfg, data)
        state = {"phase": "head", "epoch": 0, "done": False, "preprocessing": pre, "history": {},
                 "dataset": data.describe(), "class_names": data.class_names}
        if not dist.is_chief:
            with dist.output_dir(run) as scratch:
                _run(model, cfg, data, RunFiles(scratch), state, dist=dist, verbose=verbose)
            return run
        files = RunFiles(run)
        created = not run.exists()
        if run.exists() and overwrite:
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        _write_json(files.config, cfg.to_dict())
        try:
            return _run(model, cfg, data, files, state, dist=dist, verbose=verbose)
        except BaseException:
            if created and not files.checkpoints():
                shutil.rmtree(run, ignore_errors=True)
            raise


def _killed_before_first_checkpoint(run: Path) -> bool:
    """Whether ``run`` holds only what a run writes before its first checkpoint (a kill -9 skips
    the cleanup that removes it): nothing to resume, nothing of the user's to keep."""
    files = RunFiles(run)
    own = {files.config.name, files.state.name, files.history_json.name, files.history_csv.name}
    return not files.checkpoints() and all(p.name in own and p.is_file() for p in run.iterdir())


def _precision(cfg: TrainConfig) -> str:
    """The precision ``cfg`` trains in on this machine, said in one log line.

    Raises:
        ConfigError: if it was asked for by name and the hardware lacks it.
    """
    precision, why = resolve_precision(cfg.precision)
    log.info("Precision: %s (%s).", precision, why)
    return precision


def _load_data(cfg: TrainConfig) -> Dataset:
    size = cfg.input_size or (get_model_spec(cfg.model).input_size if not cfg.backbone else (32, 32))
    return load_dataset(cfg.data, input_size=size, val_split=cfg.val_split, seed=cfg.seed,
                        classes=cfg.classes, limit=cfg.limit)


def resume(run_dir: str | Path, *, verbose: int | None = None) -> Path:
    """Continue a killed run from its last finished epoch, optimizer state included.

    A multi-worker run resumes on every worker at once (each with its own ``TF_CONFIG``), all
    reading the chief's run directory.

    Raises:
        ArtifactError: if the directory holds no resumable run, or it already finished.
        WorkerError: a worker of a multi-worker run never answered or stopped answering.
    """
    run_dir = Path(run_dir)
    files = RunFiles(run_dir)
    if not files.state.is_file() and files.config.is_file() and _killed_before_first_checkpoint(run_dir):
        raise ArtifactError(f"{run_dir} has no checkpoint yet (killed before its first epoch ended): start it again "
                            f"with `edgecnn train --out {run_dir}`.")
    if not files.config.is_file() or not files.state.is_file():
        raise ArtifactError(f"{run_dir} is not a run directory that can be resumed (no config.json/state.json).")
    try:
        cfg = TrainConfig.from_dict(json.loads(files.config.read_text(encoding="utf-8")))
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ArtifactError(f"{files.config} is corrupt ({type(err).__name__}); start the run again with "
                            "--overwrite.") from err
    state = _read_state(files)
    if state.get("done"):
        raise ArtifactError(f"{run_dir} already finished ({state['epoch']} epochs); start a new run with --out.")
    cluster = cluster_for(cfg.distribute)
    precision = _precision(cfg)  # the run's own, as train() resolved it (fp32 for older runs); checked here
    keras.utils.set_random_seed(cfg.seed + state["epoch"])
    data = _load_data(cfg)
    if not files.current_checkpoint(state).is_file():
        raise ArtifactError(f"{run_dir} has no checkpoint yet (killed before its first epoch ended): start it again "
                            f"with `edgecnn train --out {run_dir}`.")
    if cluster is None or cluster.is_chief:
        for stray in files.checkpoints():  # written by an epoch whose state never was: not part of the run
            if stray != files.current_checkpoint(state):
                stray.unlink(missing_ok=True)
    dist = make_distribution(cfg.distribute, cluster=cluster, batch_size=cfg.batch_size, num_train=len(data.x_train),
                             worker_timeout_s=cfg.worker_timeout)
    # The policy before the checkpoint loads: its layers keep their recorded policies, and what
    # is built anew (a fine-tuning phase's optimizer) computes in the same precision. Loaded in
    # the strategy's scope, the variables are the strategy's (replicated).
    with precision_policy(precision), dist.running(run_dir):
        with dist.scope():
            model = load_run_model(run_dir, checkpoint=True)
        log.info("Resuming %s at epoch %d (%s phase).", run_dir, state["epoch"] + 1, state["phase"])
        with dist.output_dir(run_dir) as out:
            _run(model, cfg, data, RunFiles(out), state, dist=dist, verbose=verbose, resumed=True)
        return run_dir


def _fit(model, cfg, data, files, state, *, dist: Distribution, first: int, last: int, verbose) -> None:
    pre = state["preprocessing"]
    common = dict(num_classes=data.num_classes, mean=pre["mean"], std=pre["std"],
                  channel_order=pre["channel_order"])
    callbacks: list[keras.callbacks.Callback] = []
    if dist.strategy is None:
        # Epochs first..last-1 drawn from (seed, epoch) alone: a resumed run sees the same batches.
        train_ds = make_dataset(data.x_train, data.y_train, batch_size=cfg.batch_size, training=True,
                                augment=cfg.augment, epochs=(first, last), seed=cfg.seed, **common)
        steps: int | None = steps_per_epoch(len(data.x_train), cfg.batch_size)
    else:
        if cfg.augment.flip == "alternate" or cfg.augment.translate_px:
            raise ConfigError("Alternating flips and translate_px (the fast recipe's per-epoch augmentation) run on "
                              "one worker only; drop --distribute, or use flip: true and translate.")

        def train_pipeline(x, y, batch_size):  # each worker's shard, reshuffled every epoch
            return make_dataset(x, y, batch_size=batch_size, training=True, augment=cfg.augment,
                                seed=cfg.seed + first, **common)

        train_ds = dist.training_data(data.x_train, data.y_train, batch_size=cfg.batch_size, make=train_pipeline)
        steps = None
    val_ds = dist.validation_data(make_dataset(data.x_val, data.y_val, batch_size=cfg.batch_size, seed=cfg.seed,
                                               **common))
    if cfg.whiten_bias_epochs is not None:  # before Lookahead: it averages the held values
        from edgecnn.train.hooks import WHITEN_BIAS_LAYER, FreezeAfter

        callbacks.append(FreezeAfter(WHITEN_BIAS_LAYER, cfg.whiten_bias_epochs))
    if cfg.lookahead:  # before the checkpoint: an epoch ends with the model at the slow weights
        from edgecnn.train.hooks import Lookahead

        total = last * dist.steps_per_epoch(len(data.x_train), cfg.batch_size)
        callbacks.append(Lookahead(cfg.lookahead, total_steps=total))
    callbacks.append(_Checkpoint(files, state))
    if cfg.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.early_stopping,
                                                       restore_best_weights=True, verbose=1))
    model.fit(train_ds, validation_data=val_ds, initial_epoch=first, epochs=last, steps_per_epoch=steps,
              callbacks=callbacks, shuffle=False,
              verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2))


def _run(model, cfg: TrainConfig, data: Dataset, files: RunFiles, state: dict, *, dist: Distribution, verbose,
         resumed=False) -> Path:
    state["_t0"] = time.time() - (state["history"].get("time_s") or [0])[-1]
    steps = dist.steps_per_epoch(len(data.x_train), cfg.batch_size)
    if state["phase"] == "head":
        if not resumed:
            with dist.scope():
                _compile(model, cfg, cfg.lr, cfg.epochs, steps, data.num_classes)
        if state["epoch"] < cfg.epochs:
            _fit(model, cfg, data, files, state, dist=dist, first=state["epoch"], last=cfg.epochs, verbose=verbose)
        if cfg.fine_tune_epochs:
            from edgecnn.train.transfer import set_fine_tune

            n = set_fine_tune(model, cfg.fine_tune_layers)
            log.info("Fine-tuning: %d backbone layers unfrozen (batch norm stays frozen).", n)
            state["phase"] = "finetune"
            with dist.scope():
                _compile(model, cfg, cfg.fine_tune_lr or cfg.lr / 10, cfg.fine_tune_epochs, steps, data.num_classes)
    total = cfg.epochs + cfg.fine_tune_epochs
    if state["phase"] == "finetune" and state["epoch"] < total:
        _fit(model, cfg, data, files, state, dist=dist, first=state["epoch"], last=total, verbose=verbose)
    if not dist.is_chief:  # the chief evaluates and writes the run
        log.info("Training done on %s; the chief writes the run directory.", dist.worker)
        return files.root
    return _finish(model, cfg, data, files, state, dist=dist)


def _finish(model, cfg: TrainConfig, data: Dataset, files: RunFiles, state: dict, *, dist: Distribution) -> Path:
    from edgecnn.train.evaluate import accuracy_metrics
    from edgecnn.train.plots import plot_history

    pre = state["preprocessing"]
    card = ModelCard(
        name=files.root.name, architecture=cfg.backbone and f"transfer:{Path(cfg.backbone).name}" or cfg.model,
        class_names=data.class_names, input_size=tuple(data.x_train.shape[1:3]),
        mean=pre["mean"], std=pre["std"], channel_order=pre["channel_order"], normalization=pre["normalization"],
        dataset=data.describe(), training=cfg.to_dict(), versions=_versions(),
    )
    probs = predict_uint8(dist.local_copy(model), data.x_test, card)
    metrics = accuracy_metrics(probs, data.y_test)
    if cfg.tta != "none":  # the evaluate command's test-time augmentation, on the same predictions path
        from edgecnn.train.evaluate import tta_predict

        tta = accuracy_metrics(tta_predict(lambda x: predict_uint8(model, x, card), data.x_test, cfg.tta), data.y_test)
        metrics.update({"tta": cfg.tta, "test_accuracy_tta": tta["test_accuracy"]})
    hist = state["history"]
    metrics.update({"epochs": state["epoch"], "train_time_s": hist.get("time_s", [0])[-1],
                    "val_accuracy": (hist.get("val_accuracy") or [None])[-1],
                    "params": int(model.count_params())})
    card = card.replace(metrics={k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    _save_model_atomic(model, files.model)
    card.save(files.card)
    _write_json(files.metrics, metrics)
    _write_json(files.history_json, hist)
    keys = [k for k in hist if isinstance(hist[k], list)]
    rows = [",".join(keys)] + [",".join(str(hist[k][i]) for k in keys) for i in range(len(hist.get("epoch", [])))]
    atomic_write_text(files.history_csv, "\n".join(rows) + "\n")
    plot_history(hist, files.curves, title=card.name)
    state["done"] = True
    _write_json(files.state, {k: v for k, v in state.items() if not k.startswith("_")})
    return files.root


def predict_uint8(model: keras.Model, x: np.ndarray, card: ModelCard, batch_size: int = 256) -> np.ndarray:
    """Probabilities for uint8 NHWC images, normalized exactly as the runtime does."""
    from edgecnn.runtime.preprocess import normalize_batch

    nhwc = card if card.layout == "nhwc" else ModelCard.from_dict({**card.to_dict(), "layout": "nhwc"})
    out = [model.predict_on_batch(normalize_batch(x[i:i + batch_size], nhwc)) for i in range(0, len(x), batch_size)]
    return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0, card.num_classes), np.float32)

