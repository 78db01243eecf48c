"""`boidctl image import FILE`: images for the podman runtime on machines that reach no registry."""

from __future__ import annotations

import click

from .context import Failure, friendly


@click.group("image")
def image_group() -> None:
    """Container images of the local podman runtime."""


@image_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", metavar="IMAGE", help="Name to give the image (required for a root filesystem tarball), "
                                              "e.g. localhost/myimage:1; a Job's `image` refers to it.")
@friendly
def image_import(file: str, name: str | None) -> None:
    """Load an OCI or docker archive (`podman save`, `docker save`) or import a root filesystem tarball."""
    from boidcluster.adapters.local.images import ImageError, import_image

    try:
        got = import_image(file, name)
    except ImageError as e:
        raise Failure(str(e)) from None
    click.echo(f"image {got.name} {got.how} ({got.digest})")
