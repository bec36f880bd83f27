"""One table of dataset facts: where a dataset's files lie, what their labels mean, its classes,
its training recipe and how to write a synthetic copy of it.

    from maskformer_fast.dataset_specs import DATASETS, get_dataset_spec
    spec = get_dataset_spec("ade20k_full")     # DatasetSpec: 847 classes, 16-bit TIFF labels, ignore 65535

Everything else reads this table: the presets (:mod:`maskformer_fast.config`: one preset per
backbone and dataset with a ``recipe``), the class names and colours
(:mod:`maskformer_fast.visualize`: ``class_file``), the readers (``train/datasets.py``: one
function per ``reader``), the synthetic writer (``train/make_synthetic.py``) and ``train.py``.
Adding a dataset in a layout that exists is one entry here.

Paths are templates under the dataset root: ``{dir}`` is the split's folder name
(``splits[split]``), ``{split}`` the user-facing split ("train" or "val"). Label facts follow
the official registrations (facebookresearch/MaskFormer ``mask_former/data/datasets/``): a
stored value ``v`` is the training id ``v - label_shift``, ``raw_ignore`` is stored for pixels
that are ignored, which get the training id ``ignore_label``.
"""
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["DatasetSpec", "SyntheticClasses", "DATASETS", "PRESET_DATASETS", "get_dataset_spec"]

IGNORE_LABEL = 255


@dataclass(frozen=True)
class SyntheticClasses:
    """Stored label values the synthetic writer draws: stuff for the background, things for the
    shapes, ``void`` for the unlabelled patch (panoptic: category ids; void is unused)."""

    stuff: Tuple[int, ...]
    things: Tuple[int, ...]
    void: int


@dataclass(frozen=True)
class DatasetSpec:
    """The facts of one dataset (see the module docstring for the path templates).

    Args:
        name: the key of ``DATASETS`` (``--dataset``, ``MaskFormerConfig.dataset``).
        title: how messages name it.
        task: "semantic" (label maps) or "panoptic" (COCO panoptic json + RGB-id PNGs).
        reader: the ``train/datasets.py`` reader of this layout.
        splits: user-facing split ("train", "val") -> its folder name.
        image_dir: template of the image folder of a split.
        label_dirs: templates of the label folder (semantic) or PNG folder (panoptic); the first
            that exists is used (Mapillary Vistas releases differ).
        image_suffixes: file endings of the images; a label has the image's stem + label_suffix.
        label_suffix: ending of the label files.
        panoptic_json: template of a panoptic split's json.
        root_folder: the dataset's own folder, accepted inside --data-root.
        num_classes: the class count; None: from the data (classes_file or the json's categories).
        class_file: the package's names/colours file (``maskformer_fast/data/``); "": from the data.
        classes_file: the data's own class list under the root (custom semantic data).
        label_shift, raw_ignore, ignore_label: stored value -> training id (module docstring).
        label_mode: how label maps are stored: "L" (8-bit PNG), "P" (palette PNG), "I;16" (16-bit TIFF).
        train_mapper: "semantic" (MaskFormerSemanticDatasetMapper) or "detr_panoptic" (COCO's).
        thing_classes: contiguous ids of the thing classes (panoptic presets; data-defined otherwise).
        recipe: the official config's SOLVER/INPUT/TEST values; None: no presets (custom data).
        recipe_of: for custom data, the preset dataset whose recipe train.py starts from.
        synthetic: the label values ``make_synthetic.py`` draws.
        synthetic_stem: template of a synthetic file's stem (``{n}``: 1-based index; ``{city}``).
    """

    name: str
    title: str
    task: str
    reader: str
    splits: Mapping[str, str]
    image_dir: str
    label_dirs: Tuple[str, ...]
    image_suffixes: Tuple[str, ...] = (".jpg",)
    label_suffix: str = ".png"
    panoptic_json: str = ""
    root_folder: str = ""
    num_classes: Optional[int] = None
    class_file: str = ""
    classes_file: str = ""
    label_shift: int = 0
    raw_ignore: Optional[int] = IGNORE_LABEL
    ignore_label: int = IGNORE_LABEL
    label_mode: str = "L"
    train_mapper: str = "semantic"
    thing_classes: Tuple[int, ...] = ()
    recipe: Optional[Mapping[str, Any]] = None
    recipe_of: str = ""
    synthetic: Optional[SyntheticClasses] = None
    synthetic_stem: str = "{n:08d}"

    @property
    def classes_from_data(self) -> bool:
        return self.num_classes is None

    def layout(self) -> str:
        """One line describing where the files lie, for error messages."""
        train = {"dir": self.splits["train"], "split": "train"}
        parts = [f"{self.image_dir.format(**train)}/*{self.image_suffixes[0]}"]
        if self.task == "panoptic":
            parts += [self.panoptic_json.format(**train), f"{self.label_dirs[0].format(**train)}/*.png"]
        else:
            parts.append(f"{self.label_dirs[0].format(**train)}/*{self.label_suffix}")
        if self.classes_file:
            parts.append(self.classes_file)
        return f"{self.title} layout ({', '.join(parts)})"


_ADE_SPLITS = {"train": "training", "val": "validation"}
_ADE_RECIPE = dict(batch_size=16, crop_size=(512, 512), max_iter=160000, test_short_side=512, test_max_size=2048)
# Contiguous ids of ADE20K panoptic's things: the 100 SceneParsing-150 classes of the instance
# challenge (the second column of the official datasets/ade20k_instance_catid_mapping.txt, 1-based there).
_ADE20K_THINGS = tuple(i - 1 for i in (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38, 39, 40, 42, 43, 44, 45, 46,
    48, 50, 51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68, 70, 71, 72, 73, 74, 75, 76, 77, 79, 81, 82, 83, 84, 86,
    87, 88, 89, 90, 91, 93, 94, 96, 98, 99, 103, 104, 105, 108, 109, 111, 112, 113, 116, 117, 119, 120, 121,
    122, 124, 125, 126, 127, 128, 130, 131, 133, 134, 135, 136, 137, 138, 139, 140, 143, 144, 145, 147, 148,
    149, 150))

_SPECS = (
    # raw ids 1..150, 0 = "other" (ignored)
    DatasetSpec("ade20k", "ADE20K", "semantic", "paired", _ADE_SPLITS, "images/{dir}", ("annotations/{dir}",),
                root_folder="ADEChallengeData2016", num_classes=150, class_file="ade20k.json",
                label_shift=1, raw_ignore=0, recipe=_ADE_RECIPE,
                # wall, sky, floor, tree | person, car, chair
                synthetic=SyntheticClasses(stuff=(1, 3, 4, 5), things=(13, 21, 20), void=0),
                synthetic_stem="ADE_{dir}_{n:08d}"),
    # datasets/prepare_ade20k_full_sem_seg.py: trainIds 0..846 in 16-bit TIFFs, 65535 = unlabelled
    # (register_ade20k_full.py ignore_label=65535; 255 is a class here)
    DatasetSpec("ade20k_full", "ADE20K-Full", "semantic", "paired", _ADE_SPLITS, "images_detectron2/{dir}",
                ("annotations_detectron2/{dir}",), label_suffix=".tif", root_folder="ADE20K_2021_17_01",
                num_classes=847, class_file="ade20k_full.json", raw_ignore=65535, ignore_label=65535,
                label_mode="I;16", recipe=dict(_ADE_RECIPE, max_iter=200000),
                # wall, sky, floor, tree | person, car, chair, and two ids above 255
                synthetic=SyntheticClasses(stuff=(0, 2, 5, 3), things=(11, 14, 18, 300, 846), void=65535),
                synthetic_stem="ADE_{split}_{n:08d}"),
    # datasets/prepare_ade20k_pan_seg.py: categories 0..149
    DatasetSpec("ade20k_panoptic", "ADE20K panoptic", "panoptic", "panoptic_json", _ADE_SPLITS, "images/{dir}",
                ("ade20k_panoptic_{split}",), panoptic_json="ade20k_panoptic_{split}.json",
                root_folder="ADEChallengeData2016", num_classes=150, class_file="ade20k.json",
                thing_classes=_ADE20K_THINGS,
                # configs/ade20k-150-panoptic/maskformer_panoptic_R50_bs16_720k.yaml
                recipe=dict(batch_size=16, crop_size=(640, 640), max_iter=720000, test_short_side=640,
                            test_max_size=2560, object_mask_threshold=0.7, overlap_threshold=0.8,
                            sem_seg_postprocess_before_inference=True),
                synthetic=SyntheticClasses(stuff=(0, 2, 3, 4), things=(12, 20, 19), void=0),
                synthetic_stem="ADE_{split}_{n:08d}"),
    # DETR panoptic recipe: 554k iterations at batch 64 (~300 epochs), one lr step at 2/3. The
    # official WARMUP_ITERS 10 comes with WARMUP_FACTOR 1.0, i.e. no warmup in effect.
    # SIZE_DIVISIBILITY 0 ("COCO model should not pad image"); PANOPTIC_ON, hence postprocessing
    # before inference
    DatasetSpec("coco_panoptic", "COCO panoptic", "panoptic", "panoptic_json",
                {"train": "train2017", "val": "val2017"}, "{dir}", ("annotations/panoptic_{dir}",),
                panoptic_json="annotations/panoptic_{dir}.json", num_classes=133, class_file="coco_panoptic.json",
                train_mapper="detr_panoptic", thing_classes=tuple(range(80)),
                recipe=dict(batch_size=64, crop_size=(800, 1333), max_iter=554400, lr_schedule="multistep",
                            lr_steps=(369600,), warmup_iters=0, test_short_side=800, test_max_size=1333,
                            size_divisibility=0, sem_seg_postprocess_before_inference=True),
                # person, car, dog | sky-other-merged, grass-merged, wall-other-merged
                synthetic=SyntheticClasses(stuff=(187, 193, 199), things=(1, 3, 18), void=0),
                synthetic_stem="{n:012d}"),
    # COCO-Stuff-10k as the official preparation script writes it: contiguous ids 0..170
    DatasetSpec("coco_stuff", "COCO-Stuff-10k", "semantic", "paired", {"train": "train", "val": "test"},
                "images_detectron2/{dir}", ("annotations_detectron2/{dir}",), num_classes=171,
                class_file="coco_stuff.json",
                recipe=dict(batch_size=32, crop_size=(640, 640), max_iter=60000, test_short_side=640,
                            test_max_size=2560),
                # grass, sky-other, wall-other | person, car, dog
                synthetic=SyntheticClasses(stuff=(112, 145, 161), things=(0, 2, 16), void=255),
                synthetic_stem="COCO_{split}2014_{n:012d}"),
    # gtFine *_labelTrainIds.png, written by cityscapesscripts' createTrainIdLabelImgs: 0..18
    DatasetSpec("cityscapes", "Cityscapes", "semantic", "paired", {"train": "train", "val": "val"},
                "leftImg8bit/{dir}", ("gtFine/{dir}",), image_suffixes=("_leftImg8bit.png",),
                label_suffix="_gtFine_labelTrainIds.png", num_classes=19, class_file="cityscapes.json",
                recipe=dict(batch_size=16, crop_size=(512, 1024), max_iter=90000, test_short_side=1024,
                            test_max_size=2048),
                # road, building, sky | person, car, bicycle
                synthetic=SyntheticClasses(stuff=(0, 2, 10), things=(11, 13, 18), void=255),
                synthetic_stem="{city}/{city}_{i:06d}_000019"),
    # Mapillary Vistas v1.2 palette PNGs: ids 0..64 evaluated, 65 = unlabeled (register_mapillary_vistas.py
    # ignore_label=65); the v2.0 release keeps v1.2 under {split}/v1.2/labels, v1.2 itself under {split}/labels
    DatasetSpec("mapillary", "Mapillary Vistas v1.2", "semantic", "paired", _ADE_SPLITS, "{dir}/images",
                ("{dir}/v1.2/labels", "{dir}/labels"), root_folder="mapillary_vistas", num_classes=65,
                class_file="mapillary.json", raw_ignore=65, label_mode="P",
                # Base-MapillaryVistas-65.yaml: MIN_SIZE_TEST 2048 and MAX_SIZE_TEST 2048, i.e. the long
                # side is 2048 (8192 there is MAX_SIZE_TRAIN)
                recipe=dict(batch_size=16, crop_size=(1280, 1280), max_iter=300000, test_short_side=2048,
                            test_max_size=2048),
                # road, building, sky | person, car, bicycle
                synthetic=SyntheticClasses(stuff=(13, 17, 27), things=(19, 55, 52), void=65),
                synthetic_stem="{n:06d}"),
    # custom semantic data: label maps 0..C-1 (255 = ignore) named by DIR/classes.json
    DatasetSpec("semantic_folder", "semantic folder", "semantic", "paired", {"train": "train", "val": "val"},
                "images/{dir}", ("annotations/{dir}",), image_suffixes=(".jpg", ".jpeg", ".png", ".bmp", ".tif"),
                classes_file="classes.json", recipe_of="ade20k",
                synthetic=SyntheticClasses(stuff=(0, 1, 2), things=(3, 4), void=255),
                synthetic_stem="image_{n:04d}"),
    # custom panoptic data: any categories in COCO panoptic format
    DatasetSpec("coco_panoptic_custom", "custom COCO panoptic", "panoptic", "panoptic_json",
                {"train": "train", "val": "val"}, "images/{dir}", ("annotations/panoptic_{dir}",),
                image_suffixes=(".jpg", ".jpeg", ".png"), panoptic_json="annotations/panoptic_{dir}.json",
                train_mapper="detr_panoptic", recipe_of="coco_panoptic",
                synthetic=SyntheticClasses(stuff=(7, 8), things=(42, 99), void=0), synthetic_stem="{n:06d}"),
)

DATASETS: Dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
# datasets with presets (maskformer_<backbone>_<dataset>)
PRESET_DATASETS: Tuple[str, ...] = tuple(name for name, s in DATASETS.items() if s.recipe is not None)


def get_dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[name]
