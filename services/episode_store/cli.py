"""`graspfleet episodes ...`: list, show, count, relabel, export and import stored episodes."""

from __future__ import annotations

import argparse
import contextlib
import itertools

from services.common import auth

DEFAULT_STORE = "127.0.0.1:50051"


def _store_stub(address: str):
    from services.episode_store import client

    return client.connect(address)


def _filter(args: argparse.Namespace):
    from graspfleet.v1 import common_pb2, episode_store_pb2

    flt = episode_store_pb2.EpisodeFilter(robot_ids=args.robot or [])
    if args.domain:
        flt.domain = common_pb2.Domain.Value(f"DOMAIN_{args.domain.upper()}")
    if args.label_state:
        flt.label_state = common_pb2.LabelState.Value(f"LABEL_STATE_{args.label_state.upper()}")
    if args.collection:
        flt.collection_id = args.collection
    if args.model:
        name, _, version = args.model.partition(":")
        flt.model.name = name
        flt.model.version = int(version or 0)
    if args.since:
        flt.since.FromDatetime(args.since)
    if args.until:
        flt.until.FromDatetime(args.until)
    return flt


def _when(text: str):
    """An ISO 8601 date or time (UTC unless it says otherwise), for --since and --until."""
    import datetime

    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2026-12-01 or 2026-12-01T08:00)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _episodes_ls(args: argparse.Namespace) -> int:
    from graspfleet.v1 import common_pb2
    from services.episode_store import client

    channel, stub = _store_stub(args.store)
    with channel:
        if args.png:
            from pathlib import Path

            from services.episode_store.client import pictures

            found = client.list_all(stub, _filter(args), page_size=min(args.limit, 500))
            ids = [e.episode_id for e in itertools.islice(found, args.limit)]
            try:
                print(pictures.contact_sheet(stub, ids, Path(args.png)))
            except ValueError as err:
                raise SystemExit(f"graspfleet: {err}") from None
            return 0
        print(
            f"{'episode':<28} {'robot':<14} {'domain':<6} {'steps':>5} {'label':<10} {'model':<20} started"
        )
        episodes = client.list_all(stub, _filter(args), page_size=min(args.limit, 500))
        for e in itertools.islice(episodes, args.limit):
            state = common_pb2.LabelState.Name(e.label.state).removeprefix("LABEL_STATE_").lower()
            label = ("success" if e.label.success else "failure") if state != "unlabeled" else "-"
            model = f"{e.model.name}:{e.model.version}" if e.model.name else "-"
            domain = common_pb2.Domain.Name(e.domain).removeprefix("DOMAIN_").lower()
            started = e.started_at.ToDatetime().isoformat(timespec="seconds")
            print(
                f"{e.episode_id:<28} {e.robot_id:<14} {domain:<6} {e.num_steps:>5} {label:<10} {model:<20} {started}"
            )
    return 0


@contextlib.contextmanager
def _counting(description: str):
    """A progress bar fed (done, total).

    A refused dataset or episode ends the command in one line (the message names
    the field or the folder).
    """
    from tqdm import tqdm

    with tqdm(desc=description, unit="ep") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            yield progress
        except ValueError as err:
            raise SystemExit(f"graspfleet: {err}") from None


def _episodes_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from services.episode_store.client import rlds_export

    if args.episodes_per_shard < 1:
        raise SystemExit("graspfleet: --episodes-per-shard must be at least 1")
    channel, stub = _store_stub(args.store)
    with channel, _counting(f"export to {args.out}") as progress:
        result = rlds_export.export(
            stub,
            _filter(args),
            Path(args.out),
            episodes_per_shard=args.episodes_per_shard,
            purpose=args.purpose or "",
            on_episode=progress,
        )
    print(
        f"{result.episodes} episodes ({result.added} added now) in {result.shards} shards: "
        f"tfds.builder_from_directory({str(result.directory)!r}).as_dataset(split='train')"
    )
    return 0


def _episodes_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from services.episode_store.client import rlds_import

    channel, stub = _store_stub(args.store)
    with channel, _counting(f"import from {args.dataset}") as progress:
        result = rlds_import.import_dataset(
            stub,
            Path(args.dataset),
            split=args.split,
            metadata=auth.bearer(args.token),
            on_episode=progress,
        )
    print(
        f"{result.episodes} episodes: {result.added} stored, {result.duplicates} already "
        f"there, {result.relabeled} labels corrected as in the source"
    )
    return 0


def _episodes_show(args: argparse.Namespace) -> int:
    from google.protobuf import text_format

    from graspfleet.v1 import episode_store_pb2

    channel, stub = _store_stub(args.store)
    with channel:
        if args.png:
            from pathlib import Path

            from services.episode_store.client import pictures

            print(pictures.episode_strip(stub, args.episode_id, Path(args.png)))
            return 0
        response = stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(
                episode_id=args.episode_id, include_steps=args.steps
            ),
            timeout=30,
        )
    if args.steps:
        # Pixels are bytes; show their size rather than dumping them.
        header = response.header
        for image in (
            [header.x0, header.x0_mask, header.x0_canonical]
            + [s.image for s in response.steps]
            + [s.mask for s in response.steps]
            + [s.canonical for s in response.steps]
        ):
            if image.data:  # writing to an absent image would make it appear
                image.data = f"<{len(image.data)} bytes>".encode()
    print(text_format.MessageToString(response), end="")
    return 0


def _episodes_stats(args: argparse.Namespace) -> int:
    from graspfleet.v1 import common_pb2, episode_store_pb2

    channel, stub = _store_stub(args.store)
    with channel:
        stats = stub.Stats(episode_store_pb2.StatsRequest(filter=_filter(args)), timeout=30)
    print(
        f"episodes {stats.episodes}  steps {stats.steps}  labeled {stats.labeled}  "
        f"successes {stats.successes}  success rate {stats.success_rate:.1%}  "
        f"stored {stats.stored_bytes / 1e6:.1f} MB"
    )
    if stats.groups:
        print(
            f"{'robot':<16} {'domain':<6} {'model':<22} {'episodes':>8} {'labeled':>8} {'success':>8}"
        )
        for g in stats.groups:
            model = f"{g.model.name}:{g.model.version}" if g.model.name else "-"
            domain = common_pb2.Domain.Name(g.domain).removeprefix("DOMAIN_").lower()
            print(
                f"{g.robot_id:<16} {domain:<6} {model:<22} {g.episodes:>8} {g.labeled:>8} {g.success_rate:>8.1%}"
            )
    return 0


def _episodes_relabel(args: argparse.Namespace) -> int:
    from graspfleet.v1 import episode_store_pb2

    channel, stub = _store_stub(args.store)
    with channel:
        response = stub.Relabel(
            episode_store_pb2.RelabelRequest(
                episode_id=args.episode_id,
                success=args.success,
                reason=args.reason,
                source=args.source,
            ),
            metadata=auth.bearer(args.token),
            timeout=30,
        )
    print(
        f"{args.episode_id}: {'success' if response.summary.label.success else 'failure'} "
        f"({len(response.label_history)} labels in its history)"
    )
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Adds the `episodes` command group (the store's client side) to `graspfleet`."""
    episodes = commands.add_parser("episodes", help="inspect and label stored episodes")
    episode_commands = episodes.add_subparsers(dest="episodes_command", required=True)
    for name, handler, help_text in (
        ("ls", _episodes_ls, "list episodes"),
        ("stats", _episodes_stats, "counts and success rates"),
        ("export", _episodes_export, "write episodes as an RLDS dataset in TFDS's format"),
    ):
        sub = episode_commands.add_parser(name, help=help_text)
        sub.add_argument("--domain", choices=["sim", "real"])
        sub.add_argument("--robot", action="append", help="robot id (repeatable)")
        sub.add_argument("--label-state", choices=["unlabeled", "auto", "relabeled"])
        sub.add_argument("--collection", help="collection id")
        sub.add_argument("--model", help="model name[:version]")
        sub.add_argument("--since", type=_when, help="started at or after (ISO 8601, UTC)")
        sub.add_argument("--until", type=_when, help="started before (ISO 8601, UTC)")
        sub.set_defaults(handler=handler)
    episode_commands.choices["ls"].add_argument("--limit", type=int, default=50)
    episode_commands.choices["ls"].add_argument(
        "--png", help="draw the listed episodes as a contact sheet (x0, last image, label) here"
    )
    export = episode_commands.choices["export"]
    export.add_argument("out", help="the dataset folder (a stopped export there is resumed)")
    export.add_argument("--format", choices=["rlds"], default="rlds")
    export.add_argument("--episodes-per-shard", type=int, default=100)
    export.add_argument(
        "--purpose",
        choices=["training", "evaluation"],
        help="only training data, or only closed-loop evaluation episodes (default: both)",
    )
    show = episode_commands.add_parser("show", help="one episode's metadata and label history")
    show.add_argument("episode_id")
    show.add_argument("--steps", action="store_true", help="include steps (pixels shown as sizes)")
    show.add_argument(
        "--png", help="draw the episode as a strip (x0, each step with its command, outcome) here"
    )
    show.set_defaults(handler=_episodes_show)
    relabel = episode_commands.add_parser("relabel", help="correct an episode's label")
    relabel.add_argument("episode_id")
    outcome = relabel.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--success", dest="success", action="store_true")
    outcome.add_argument("--failure", dest="success", action="store_false")
    relabel.add_argument("--reason", required=True)
    relabel.add_argument("--source", required=True, help="who corrects it, e.g. user:alice")
    auth.add_token_flag(relabel)
    relabel.set_defaults(handler=_episodes_relabel)
    imports = episode_commands.add_parser(
        "import", help="ingest an RLDS dataset with graspfleet's features (an export)"
    )
    imports.add_argument("dataset", help="the TFDS dataset folder")
    imports.add_argument("--split", default="train")
    auth.add_token_flag(imports)
    imports.set_defaults(handler=_episodes_import)
    for sub in list(episode_commands.choices.values()):
        sub.add_argument(
            "--store",
            default=DEFAULT_STORE,
            help=f"episode store host:port (default {DEFAULT_STORE})",
        )
