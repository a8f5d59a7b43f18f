"""The training loop: build, fit (head, then optional fine-tune), checkpoint every epoch
atomically, resume after a kill, and write the run directory with its model card.

What a run directory holds, and its typed training state, live in :mod:`edgecnn.train.run`.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import edgecnn.train._tf  # noqa: F401  (before keras: TensorFlow loads quietly)
from edgecnn import __version__
from edgecnn._files import atomic_write_text
from edgecnn.card import ModelCard
from edgecnn.datasets import Dataset, channel_stats, load_dataset
from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.train.config import TrainConfig
from edgecnn.train.distribute import Distribution, cluster_for, make_distribution
from edgecnn.train.pipeline import make_dataset, steps_per_epoch
from edgecnn.train.precision import precision_policy, resolve_precision
from edgecnn.train.registry import build_model, get_model_spec
from edgecnn.train.run import Preprocessing, RunFiles, TrainState, load_run_model, save_model_atomic, write_json

log = logging.getLogger(__name__)

__all__ = ["train", "resume", "predict_uint8", "EpochCheckpoint", "make_optimizer", "learning_rate_schedule",
           "versions", "build_zoo_model"]


# ------------------------------------------------------------------------------------ building

def _build(cfg: TrainConfig, data: Dataset) -> tuple[keras.Model, Preprocessing]:
    size = tuple(data.x_train.shape[1:3])
    if cfg.backbone:
        from edgecnn.train.transfer import build_transfer_model

        return build_transfer_model(cfg.backbone, data.num_classes, input_size=size, weights=cfg.weights,
                                    backbone_input_size=cfg.backbone_input_size,
                                    dropout=0.2 if cfg.dropout is None else cfg.dropout)
    model = build_zoo_model(cfg, data.num_classes, size)
    if cfg.normalization == "dataset":
        mean, std = channel_stats(data.x_train)
        pre = Preprocessing(mean=tuple(mean), std=tuple(max(s, 1e-3) for s in std), normalization="dataset")
    else:
        pre = Preprocessing(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), normalization="scale")
    _data_init(model, cfg, data, pre)
    return model, pre


def build_zoo_model(cfg: TrainConfig, num_classes: int, size: tuple[int, int]) -> keras.Model:
    """``cfg.model`` from the zoo for ``num_classes`` at ``size``, with the recipe's width and dropout.

    Raises:
        ConfigError: for an option the model does not take or a size it cannot have.
    """
    kwargs: dict[str, Any] = {}
    if cfg.dropout is not None:
        kwargs["dropout"] = cfg.dropout
    if cfg.width is not None:
        kwargs["width"] = cfg.width
    try:
        return build_model(cfg.model, num_classes, input_size=size, **kwargs)
    except TypeError as err:
        raise ConfigError(f"Model {cfg.model} does not take {', '.join(kwargs)}: {err}.") from err
    except ValueError as err:
        raise ConfigError(f"Cannot build {cfg.model} for {size[0]}x{size[1]} inputs: {err}") from err


def _data_init(model: keras.Model, cfg: TrainConfig, data: Dataset, pre: Preprocessing) -> None:
    """Data-dependent initialization, once, before the first epoch (a resumed run has it in its checkpoint)."""
    from edgecnn.train.hooks import WHITEN_BIAS_LAYER, WHITEN_IMAGES, has_whiten_layer, whiten_init

    if cfg.whiten_bias_epochs is not None and not any(layer.name == WHITEN_BIAS_LAYER for layer in model.layers):
        raise ConfigError(f"whiten_bias_epochs needs a model with a '{WHITEN_BIAS_LAYER}' layer (fast_cifar has one); "
                          f"{model.name} has none: remove whiten_bias_epochs from the recipe.")
    if cfg.whiten_init or (cfg.whiten_init is None and has_whiten_layer(model)):
        from edgecnn.runtime.preprocess import normalize_batch

        card = ModelCard(name="init", architecture=cfg.model, class_names=tuple(data.class_names),
                         input_size=tuple(data.x_train.shape[1:3]), mean=pre.mean, std=pre.std,
                         channel_order=pre.channel_order)
        whiten_init(model, normalize_batch(data.x_train[:WHITEN_IMAGES], card))


def learning_rate_schedule(cfg: TrainConfig, lr: float, epochs: int, steps: int):
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


def make_optimizer(cfg: TrainConfig, lr) -> keras.optimizers.Optimizer:
    wd = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay or 1e-4)
    return keras.optimizers.RMSprop(lr, momentum=cfg.momentum, weight_decay=wd)


def _compile(model: keras.Model, cfg: TrainConfig, lr: float, *, epochs: int, steps: int, num_classes: int) -> None:
    metrics: list[Any] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5"))
    model.compile(optimizer=make_optimizer(cfg, learning_rate_schedule(cfg, lr, epochs, steps)),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=metrics)


# ------------------------------------------------------------------------------------ callbacks

class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: the model with its optimizer state, then the state file (both atomic).

    ``state`` is the run's state after the last committed epoch; ``t0`` the ``time.time()`` the
    run's ``time_s`` counts from (earlier sessions of a resumed run included).
    """

    def __init__(self, files: RunFiles, state: TrainState, *, t0: float) -> None:
        super().__init__()
        self.files, self.state, self.t0 = files, state, t0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        time_s = round(time.time() - self.t0, 2)
        path = self.files.checkpoint_for(epoch + 1)
        save_model_atomic(self.model, path)
        self.state = self.state.after_epoch(epoch + 1, logs or {}, time_s=time_s, checkpoint=path.name)
        # The commit point: from here on the new checkpoint is the run's; older ones can go.
        self.state.save(self.files.state)
        for old in self.files.checkpoints():
            if old != path:
                old.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ starting

def versions() -> dict[str, str]:
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
    from edgecnn.train.tasks import model_task

    name = Path(cfg.backbone).name if cfg.backbone else cfg.model
    task = model_task(cfg)  # unknown names and a model of another task fail before the data is loaded
    run = Path(cfg.out or f"runs/{name}")
    if task != "classify":
        return _train_task(cfg.replace(task=task), run, overwrite=overwrite, verbose=verbose)
    cluster = cluster_for(cfg.distribute)  # multi-worker: a malformed TF_CONFIG fails here
    if cluster is None or cluster.is_chief:
        overwrite = _may_write(run, overwrite=overwrite)
    cfg = cfg.replace(precision=_precision(cfg))  # the run records what it trained in, 'auto' resolved
    keras.utils.set_random_seed(cfg.seed)
    data = _load_data(cfg)
    # Only now the workers meet: one that stopped on an error above would leave the others waiting.
    dist = make_distribution(cfg.distribute, cluster=cluster, batch_size=cfg.batch_size, num_train=len(data.x_train),
                             worker_timeout_s=cfg.worker_timeout)
    with precision_policy(cfg.precision), dist.running(run):
        with dist.scope():
            model, pre = _build(cfg, data)
        state = TrainState(preprocessing=pre, dataset=data.describe(), class_names=tuple(data.class_names))
        if not dist.is_chief:
            with dist.output_dir(run) as scratch:
                _Session(cfg=cfg, data=data, files=RunFiles(scratch), dist=dist, verbose=verbose).run(model, state)
            return run
        return _train_into(run, model, state, overwrite=overwrite,
                           session=_Session(cfg=cfg, data=data, files=RunFiles(run), dist=dist, verbose=verbose))


def _train_task(cfg: TrainConfig, run: Path, *, overwrite: bool, verbose: int | None) -> Path:
    """A segmenter or detector (:mod:`edgecnn.train.tasks`), into a run directory as a classifier's."""
    from edgecnn.train.tasks import run_task

    task = str(cfg.task)
    classifier_only = {"--distribute": cfg.distribute != "none", "--fine-tune-epochs": cfg.fine_tune_epochs,
                       "lookahead": cfg.lookahead, "--tta": cfg.tta != "none", "--early-stopping": cfg.early_stopping,
                       "--classes": cfg.classes, "--label-smoothing": cfg.label_smoothing,
                       "--normalization dataset": cfg.normalization != "scale", "whiten_init": cfg.whiten_init}
    given = [flag for flag, value in classifier_only.items() if value]
    if given:
        raise ConfigError(f"--task {task} does not take {', '.join(given)} (classifier options); drop them.")
    overwrite = _may_write(run, overwrite=overwrite)
    cfg = cfg.replace(precision=_precision(cfg))
    keras.utils.set_random_seed(cfg.seed)
    created = not run.exists()
    with precision_policy(cfg.precision):
        if run.exists() and overwrite:
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        files = RunFiles(run)
        write_json(files.config, cfg.to_dict())
        try:
            return run_task(cfg, task, files, verbose=verbose)
        except BaseException:
            if (created or overwrite) and not files.checkpoints():
                shutil.rmtree(run, ignore_errors=True)
            raise


def _may_write(run: Path, *, overwrite: bool) -> bool:
    """Whether the chief trains into ``run`` over what is there (``overwrite``, or a run killed
    before its first checkpoint).

    Raises:
        ConfigError: if ``run`` holds anything else and ``overwrite`` is off.
    """
    if overwrite or not run.exists() or not any(run.iterdir()):
        return overwrite
    if not _killed_before_first_checkpoint(run):
        raise ConfigError(f"Run directory {run} exists; pass --out NEW, --overwrite, or resume with `edgecnn train "
                          f"--resume {run}`.")
    log.warning("%s holds a run killed before its first checkpoint (nothing to resume): starting it again.", run)
    return True


def _train_into(run: Path, model: keras.Model, state: TrainState, *, session: _Session, overwrite: bool) -> Path:
    """The chief's part of :func:`train`: (re)create the run directory, train, and remove the
    directory again if the run stops before its first checkpoint."""
    created = not run.exists()
    if run.exists() and overwrite:
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    write_json(session.files.config, session.cfg.to_dict())
    try:
        return session.run(model, state)
    except BaseException:
        if created and not session.files.checkpoints():
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
    cfg, state = _read_run(files)
    if cfg.task not in (None, "classify"):
        from edgecnn.train.tasks import resume_task

        if not files.current_checkpoint(state).is_file():
            raise ArtifactError(f"{run_dir} has no checkpoint yet (killed before its first epoch ended): start it "
                                f"again with `edgecnn train --out {run_dir}`.")
        keras.utils.set_random_seed(cfg.seed + state.epoch)
        with precision_policy(_precision(cfg)):
            return resume_task(cfg, cfg.task, files, state, verbose=verbose)
    cluster = cluster_for(cfg.distribute)
    precision = _precision(cfg)  # the run's own, as train() resolved it (fp32 for older runs); checked here
    keras.utils.set_random_seed(cfg.seed + state.epoch)
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
        log.info("Resuming %s at epoch %d (%s phase).", run_dir, state.epoch + 1, state.phase)
        with dist.output_dir(run_dir) as out:
            session = _Session(cfg=cfg, data=data, files=RunFiles(out), dist=dist, verbose=verbose)
            session.run(model, state, resumed=True)
        return run_dir


def _read_run(files: RunFiles) -> tuple[TrainConfig, TrainState]:
    """The recipe and state of a run to resume.

    Raises:
        ArtifactError: if either is missing or corrupt, or the run already finished.
    """
    run_dir = files.root
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
    state = TrainState.load(files.state)
    if state.done:
        raise ArtifactError(f"{run_dir} already finished ({state.epoch} epochs); start a new run with --out.")
    return cfg, state


# ------------------------------------------------------------------------------------ running

@dataclass(frozen=True, kw_only=True)
class _Session:
    """One process's part of a run: the recipe, the data, where it writes and how it is
    distributed. Its methods are the steps of training, each handing on the :class:`TrainState`."""

    cfg: TrainConfig
    data: Dataset
    files: RunFiles
    dist: Distribution
    verbose: int | None

    def run(self, model: keras.Model, state: TrainState, *, resumed: bool = False) -> Path:
        """Train the phases ``state`` has left, then (on the chief) write the finished run."""
        cfg, dist = self.cfg, self.dist
        t0 = time.time() - state.train_time_s
        steps = dist.steps_per_epoch(len(self.data.x_train), cfg.batch_size)
        if state.phase == "head":
            if not resumed:
                with dist.scope():
                    _compile(model, cfg, cfg.lr, epochs=cfg.epochs, steps=steps, num_classes=self.data.num_classes)
            if state.epoch < cfg.epochs:
                state = self.fit(model, state, last=cfg.epochs, t0=t0)
            if cfg.fine_tune_epochs:
                from edgecnn.train.transfer import set_fine_tune

                n = set_fine_tune(model, cfg.fine_tune_layers)
                log.info("Fine-tuning: %d backbone layers unfrozen (batch norm stays frozen).", n)
                state = state.replace(phase="finetune")
                with dist.scope():
                    _compile(model, cfg, cfg.fine_tune_lr or cfg.lr / 10, epochs=cfg.fine_tune_epochs, steps=steps,
                             num_classes=self.data.num_classes)
        total = cfg.epochs + cfg.fine_tune_epochs
        if state.phase == "finetune" and state.epoch < total:
            state = self.fit(model, state, last=total, t0=t0)
        if not dist.is_chief:  # the chief evaluates and writes the run
            log.info("Training done on %s; the chief writes the run directory.", dist.worker)
            return self.files.root
        return self.finish(model, state)

    def fit(self, model: keras.Model, state: TrainState, *, last: int, t0: float) -> TrainState:
        """Epochs ``state.epoch`` to ``last`` (exclusive start, 0-based as Keras counts), each
        committed by the checkpoint callback; returns the state after the last one."""
        cfg, data, first = self.cfg, self.data, state.epoch
        common = self._pipeline_args(state.preprocessing)
        train_ds, steps = self._training_data(first, last, common)
        val_ds = self.dist.validation_data(make_dataset(data.x_val, data.y_val, batch_size=cfg.batch_size,
                                                        seed=cfg.seed, **common))
        checkpoint = EpochCheckpoint(self.files, state, t0=t0)
        model.fit(train_ds, validation_data=val_ds, initial_epoch=first, epochs=last, steps_per_epoch=steps,
                  callbacks=self._callbacks(checkpoint, last=last), shuffle=False,
                  verbose=self.verbose if self.verbose is not None else (1 if sys.stdout.isatty() else 2))
        return checkpoint.state

    def _pipeline_args(self, pre: Preprocessing) -> dict[str, Any]:
        return dict(num_classes=self.data.num_classes, mean=pre.mean, std=pre.std, channel_order=pre.channel_order)

    def _training_data(self, first: int, last: int, common: dict[str, Any]) -> tuple[Any, int | None]:
        """The training batches of epochs ``first``..``last``, and the steps per epoch to tell fit."""
        cfg, data = self.cfg, self.data
        if self.dist.strategy is None:
            # Epochs first..last-1 drawn from (seed, epoch) alone: a resumed run sees the same batches.
            train_ds = make_dataset(data.x_train, data.y_train, batch_size=cfg.batch_size, training=True,
                                    augment=cfg.augment, epochs=(first, last), seed=cfg.seed, **common)
            return train_ds, steps_per_epoch(len(data.x_train), cfg.batch_size)
        if cfg.augment.flip == "alternate" or cfg.augment.translate_px:
            raise ConfigError("Alternating flips and translate_px (the fast recipe's per-epoch augmentation) run on "
                              "one worker only; drop --distribute, or use flip: true and translate.")

        def train_pipeline(x, y, batch_size):  # each worker's shard, reshuffled every epoch
            return make_dataset(x, y, batch_size=batch_size, training=True, augment=cfg.augment,
                                seed=cfg.seed + first, **common)

        return self.dist.training_data(data.x_train, data.y_train, batch_size=cfg.batch_size,
                                       make=train_pipeline), None

    def _callbacks(self, checkpoint: EpochCheckpoint, *, last: int) -> list[keras.callbacks.Callback]:
        cfg = self.cfg
        callbacks: list[keras.callbacks.Callback] = []
        if cfg.whiten_bias_epochs is not None:  # before Lookahead: it averages the held values
            from edgecnn.train.hooks import WHITEN_BIAS_LAYER, FreezeAfter

            callbacks.append(FreezeAfter(WHITEN_BIAS_LAYER, cfg.whiten_bias_epochs))
        if cfg.lookahead:  # before the checkpoint: an epoch ends with the model at the slow weights
            from edgecnn.train.hooks import Lookahead

            total = last * self.dist.steps_per_epoch(len(self.data.x_train), cfg.batch_size)
            callbacks.append(Lookahead(cfg.lookahead, total_steps=total))
        callbacks.append(checkpoint)
        if cfg.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.early_stopping,
                                                           restore_best_weights=True, verbose=1))
        return callbacks

    def finish(self, model: keras.Model, state: TrainState) -> Path:
        """Score the trained model on the test split and write the finished run: model, card,
        metrics, history (JSON, CSV, curves) and the state marked done."""
        from edgecnn.train.plots import plot_history

        cfg, data, files, pre = self.cfg, self.data, self.files, state.preprocessing
        card = ModelCard(
            name=files.root.name, architecture=cfg.backbone and f"transfer:{Path(cfg.backbone).name}" or cfg.model,
            class_names=tuple(data.class_names), input_size=tuple(data.x_train.shape[1:3]),
            mean=pre.mean, std=pre.std, channel_order=pre.channel_order, normalization=pre.normalization,
            dataset=data.describe(), training=cfg.to_dict(), versions=versions(),
        )
        metrics = self._test_metrics(model, card)
        hist = state.history
        metrics.update({"epochs": state.epoch, "train_time_s": state.train_time_s,
                        "val_accuracy": (hist.get("val_accuracy") or [None])[-1],
                        "params": int(model.count_params())})
        card = card.replace(metrics={k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
        save_model_atomic(model, files.model)
        card.save(files.card)
        write_json(files.metrics, metrics)
        write_json(files.history_json, hist)
        keys = [k for k in hist if isinstance(hist[k], list)]
        rows = [",".join(keys)] + [",".join(str(hist[k][i]) for k in keys) for i in range(len(hist.get("epoch", [])))]
        atomic_write_text(files.history_csv, "\n".join(rows) + "\n")
        plot_history(hist, files.curves, title=card.name)
        state.replace(done=True).save(files.state)
        return files.root

    def _test_metrics(self, model: keras.Model, card: ModelCard) -> dict[str, Any]:
        """Accuracy on the test split (and under the recipe's test-time augmentation, on the
        evaluate command's predictions path). Every prediction goes through one local copy of
        the model: on a multi-worker run the other workers have left once training ends, and a
        distributed predict on the chief would wait for them in a collective (it failed with
        "a worker stopped answering" before the TTA pass used the local copy too)."""
        from edgecnn.train.evaluate import accuracy_metrics, tta_predict

        local = self.dist.local_copy(model)
        x, y = self.data.x_test, self.data.y_test
        metrics = accuracy_metrics(predict_uint8(local, x, card), y)
        if self.cfg.tta != "none":
            tta = accuracy_metrics(tta_predict(lambda v: predict_uint8(local, v, card), x, self.cfg.tta), y)
            metrics.update({"tta": self.cfg.tta, "test_accuracy_tta": tta["test_accuracy"]})
        return metrics


def predict_uint8(model: keras.Model, x: np.ndarray, card: ModelCard, batch_size: int = 256) -> np.ndarray:
    """Probabilities for uint8 NHWC images, normalized exactly as the runtime does."""
    from edgecnn.runtime.preprocess import normalize_batch

    nhwc = card if card.layout == "nhwc" else ModelCard.from_dict({**card.to_dict(), "layout": "nhwc"})
    out = [model.predict_on_batch(normalize_batch(x[i:i + batch_size], nhwc)) for i in range(0, len(x), batch_size)]
    return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0, card.num_classes), np.float32)
