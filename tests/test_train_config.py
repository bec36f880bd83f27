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


def test_every_preset_dataset_has_a_reader_and_custom_data_names_its_classes():
    args, cfg = _config("--preset", "maskformer_r50_mapillary")
    assert args.dataset == "mapillary" and cfg.num_classes == 65
    args, cfg = _config("--preset", "maskformer_r101_ade20k_full")
    assert (args.dataset, cfg.num_classes, cfg.ignore_value) == ("ade20k_full", 847, 65535)
    # custom data: the recipe of maskformer_r50_ade20k / _coco_panoptic, no num_classes=N needed
    # (prepare() takes it from the data)
    args, cfg = _config("--dataset", "semantic_folder")
    assert (cfg.name, cfg.dataset) == ("maskformer_r50_ade20k", "semantic_folder")
    args, cfg = _config("--dataset", "coco_panoptic_custom")
    assert (cfg.name, cfg.dataset, cfg.size_divisibility) == ("maskformer_r50_coco_panoptic", "coco_panoptic_custom", 0)
    args, cfg = _config("--preset", "maskformer_swin_t_cityscapes", "--dataset", "semantic_folder")
    assert (cfg.dataset, cfg.crop_size, cfg.ignore_value) == ("semantic_folder", (512, 1024), 255)
