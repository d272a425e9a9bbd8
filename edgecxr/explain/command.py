"""``edgecxr explain``: one image's heatmap, or how explanations move after quantization."""
from __future__ import annotations

import os

import click


@click.command("explain")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--image", type=click.Path(dir_okay=False), help="X-ray to explain (PNG, JPEG, BMP, DICOM).")
@click.option("--method", default="auto", show_default=True, type=click.Choice(["auto", "gradcam", "lime"]),
              help="auto: Grad-CAM for .pt checkpoints, LIME for ONNX/TFLite (LIME works for every model type).")
@click.option("--class", "class_name", help="Class to explain (default: the predicted class).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: explain/ next to the model).")
@click.option("--compare", nargs=2, type=click.Path(dir_okay=False), metavar="FP32_MODEL INT8_MODEL",
              help="Compare the explanations of two models (e.g. FP32 and its INT8 version) on --n images.")
@click.option("--data", type=click.Path(file_okay=False), help="--compare: folder of images (class subfolders or loose files); default: FP32_MODEL's test split.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val", "train"]), help="--compare without --data: which split of the model's run.")
@click.option("--split-csv", type=click.Path(dir_okay=False), help="--compare without --data: split.csv to use instead of the one recorded in FP32_MODEL.")
@click.option("--n", "n_images", default=20, show_default=True, type=click.IntRange(1), help="--compare: number of images (classes taken in turn).")
@click.option("--top", default=0.2, show_default=True, type=click.FloatRange(0.01, 0.99), help="--compare: fraction of pixels forming the 'most important' region.")
@click.option("--samples", default=1000, show_default=True, type=click.IntRange(2), help="LIME: perturbed images (more: steadier maps, longer run).")
@click.option("--segments", default=50, show_default=True, type=click.IntRange(2), help="LIME: approximate number of SLIC superpixels.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="LIME: perturbed images per model call.")
@click.option("--seed", default=0, show_default=True, type=int, help="LIME sampling seed (and image choice for --compare).")
@click.option("--threads", type=click.IntRange(1), help="Runtime threads.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def explain_command(model: str | None, image: str | None, method: str, class_name: str | None, out: str | None,
                    compare: tuple[str, str] | None, data: str | None, split: str, split_csv: str | None, n_images: int, top: float, samples: int,
                    segments: int, batch_size: int, seed: int, threads: int | None, quiet: bool) -> None:
    """Heatmap of what drove MODEL's prediction on --image, or (--compare) how much the
    explanation moves between an FP32 model and its quantized version.

    \b
    Examples:
      edgecxr explain runs/mnv2/best.pt --image xray.png                  # Grad-CAM
      edgecxr explain runs/mnv2/export/mobilenet_v2_int8.tflite --image xray.png --samples 500
      edgecxr explain runs/mnv2/best.pt --image xray.png --method lime --class COVID
      edgecxr explain --compare runs/mnv2/export/mobilenet_v2_fp32.onnx runs/mnv2/export/mobilenet_v2_int8.tflite --data DIR --n 20

    Writes NAME_METHOD.png (heatmap over the X-ray, class probabilities), NAME_METHOD.npy
    (the raw map: Grad-CAM at the model's input size in 0..1, LIME at the image's size,
    signed weights) and NAME_METHOD.json. --compare writes compare.md and compare.json:
    per image, the Spearman rank correlation of the two maps and the IoU of their top
    regions, then the means.
    """
    from edgecxr.errors import EdgecxrError
    from edgecxr.explain.api import LimeOptions

    lime = LimeOptions(samples=samples, segments=segments, batch_size=batch_size, seed=seed)
    if compare:
        if model or image:
            raise click.UsageError("--compare takes its two models itself: drop MODEL and --image")
        _compare(compare, data, split, split_csv, n_images, method, lime, top, threads, out, quiet)
        return
    if not model or not image:
        raise click.UsageError("give MODEL and --image FILE (or --compare FP32_MODEL INT8_MODEL)")
    if not os.path.exists(model):
        raise EdgecxrError(f"{model}: model file not found")
    _single(model, image, method, class_name, lime, threads, out, quiet)


def _single(model: str, image: str, method: str, class_name: str | None, lime, threads: int | None, out: str | None, quiet: bool) -> None:
    from edgecxr.device.atomic import write_json
    from edgecxr.device.image_io import load_gray
    from edgecxr.explain.api import default_method, explain, target_index
    from edgecxr.explain.render import render_explanation, save_npy
    from edgecxr.models.runtime import open_model

    gray = load_gray(image)
    backend = open_model(model, threads)
    classes = list(backend.contract.classes)
    method = default_method(backend) if method == "auto" else method
    exp = explain(backend, gray, method, target_index(classes, class_name), lime, progress=not quiet)
    out = out or os.path.join(os.path.dirname(os.path.abspath(model)), "explain")
    stem = f"{os.path.splitext(os.path.basename(image))[0]}_{method}"
    c = backend.contract
    title = f"{os.path.basename(model)} ({c.arch}, {c.format} {c.precision}, {backend.runtime}) - {method} - {os.path.basename(image)}"
    render_explanation(os.path.join(out, stem + ".png"), gray, exp.map, exp.probabilities, classes, exp.target, title)
    save_npy(os.path.join(out, stem + ".npy"), exp.map)
    write_json(os.path.join(out, stem + ".json"), {
        "model": os.path.abspath(model), "image": os.path.abspath(image), "method": method, "runtime": backend.runtime,
        "explained_class": classes[exp.target], "predicted_class": classes[int(exp.probabilities.argmax())],
        "probabilities": {n: float(p) for n, p in zip(classes, exp.probabilities)}, "seconds": exp.seconds,
        "map_shape": list(exp.map.shape), **exp.details})
    click.echo(f"{'class':<20}{'probability':>12}")
    for i, (n, p) in enumerate(zip(classes, exp.probabilities)):
        click.echo(f"{n:<20}{float(p):>12.4f}{'   <- explained' if i == exp.target else ''}")
    extra = f", {exp.details['samples']} samples, {exp.details['samples_per_s']:.0f} samples/s" if method == "lime" else ""
    click.echo(f"{method} on {backend.runtime}: {exp.seconds:.2f} s{extra}")
    click.echo(f"wrote {os.path.join(out, stem)}.png, .npy, .json")


def _compare(models: tuple[str, str], data: str | None, split: str, split_csv: str | None, n: int, method: str, lime, top: float, threads: int | None,
             out: str | None, quiet: bool) -> None:
    from edgecxr.device.atomic import write_json, write_text
    from edgecxr.errors import EdgecxrError
    from edgecxr.explain.compare import compare_models, format_table, images_from_folder, images_from_split, pick_images
    from edgecxr.models.runtime import open_model

    for m in models:
        if not os.path.exists(m):
            raise EdgecxrError(f"{m}: model file not found")
    if data:
        pool = images_from_folder(data)
    else:
        pool = images_from_split(open_model(models[0], threads).contract, split, split_csv)
    images = pick_images(pool, n, lime.seed)
    result = compare_models(models[0], models[1], images, method, lime, top, threads, progress=not quiet)
    out = out or os.path.join(os.path.dirname(os.path.abspath(models[1])), "explain_compare")
    table = format_table(result)
    write_json(os.path.join(out, "compare.json"), result)
    write_text(os.path.join(out, "compare.md"), table + "\n")
    click.echo(table)
    if result["skipped_files"]:
        click.echo(f"skipped {len(result['skipped_files'])} unreadable images (listed in compare.json)")
    click.echo(f"wrote {out}/compare.md, compare.json")
