"""The `varstore` command: inspect, list, compare checkpoints and plan restores.

    varstore inspect PATH [--tensor NAME]... [--values] [--json]
    varstore ls DIR
    varstore diff A B [--values]
    varstore plan PATH --like OTHER

Every command reads varstore checkpoints, any Orbax PyTree checkpoint and
TensorFlow 1.x checkpoints (a PATH may also be a directory: its latest
checkpoint), on any number of devices, and reads no array data unless values
are asked for. Exit status: 0 success (`diff`: no differences; `plan`: the
restore would succeed), 1 differences found (`diff`) or a restore that would
fail (`plan`), 2 bad usage or an unreadable checkpoint, with one line on stderr.

Built on click (a dependency: `click>=8.1`): subcommands, `--help` on each,
usage errors with status 2, and in-process testing (`click.testing.CliRunner`)
come with it; with argparse all of that would be hand-written.
`python -m varstore.inspect_checkpoint` keeps argparse, to take TensorFlow's
flags exactly as TensorFlow's tool does.
"""

from __future__ import annotations

import click

from ._cli_common import UsageFailure
from ._cli_inspect import diff, inspect
from ._cli_manage import convert, ls, plan
from ._errors import VarStoreError

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Turns expected failures into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # click handles a closed pipe (`varstore ls | head`)
        except (VarStoreError, OSError, UsageFailure) as e:
            name = ctx.invoked_subcommand or ""
            message = " ".join(str(e).split()) or type(e).__name__
            click.echo(f"varstore {name}: error: {message}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="varstore", prog_name="varstore")
def cli() -> None:
    """Inspect, list and compare checkpoints (varstore, Orbax and TensorFlow 1.x),
    and plan restores. Exit status: 0 ok, 1 differences, 2 bad usage or an
    unreadable checkpoint."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `varstore` console script."""
    cli.main(args=argv, prog_name="varstore")


# The subcommands live in `_cli_inspect` and `_cli_manage` and never import this
# module, so they join whichever group this file defines, `varstore._cli.cli` or
# the one of `python -m varstore._cli` (which runs this file as `__main__`).
cli.add_command(inspect)
cli.add_command(ls)
cli.add_command(diff)
cli.add_command(plan)
cli.add_command(convert)


if __name__ == "__main__":
    main()
