"""train.py's choice of config and dataset: --dataset follows the preset, a mismatch is refused."""
import pytest

from train.train import build_config, parse_args


def _config(*argv):
    args = parse_args(["--data-root", "somewhere", *argv])
    return args, build_config(args)


def test_dataset_defaults_to_the_presets():
    args, cfg = _config("--preset", "maskformer_r50_coco_panoptic")
    assert args.dataset == "coco_panoptic" and cfg.num_classes == 133 and cfg.size_divisibility == 0
    args, cfg = _config()
    assert args.dataset == "ade20k" and cfg.name == "maskformer_r50_ade20k"
    args, cfg = _config("--dataset", "cityscapes")
    assert cfg.name == "maskformer_r50_cityscapes" and cfg.num_classes == 19


def test_preset_dataset_mismatch_is_refused_unless_num_classes_is_set():
    with pytest.raises(ValueError, match=r"--dataset cityscapes does not match preset maskformer_r50_ade20k "
                                         r"\(dataset ade20k, 150 classes\).*num_classes=N"):
        _config("--preset", "maskformer_r50_ade20k", "--dataset", "cityscapes")
    args, cfg = _config("--preset", "maskformer_r50_ade20k", "--dataset", "cityscapes", "num_classes=19")
    assert (cfg.dataset, cfg.num_classes, cfg.crop_size) == ("cityscapes", 19, (512, 512))  # ADE20K recipe kept


def test_preset_without_a_reader_is_refused():
    with pytest.raises(ValueError, match="maskformer_r50_mapillary is for dataset mapillary, which train.py has no "
                                         "reader for"):
        _config("--preset", "maskformer_r50_mapillary")
