import argparse

from . import store


def main() -> None:
    parser = argparse.ArgumentParser(prog="todo")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    add = sub.add_parser("add")
    add.add_argument("text")
    done = sub.add_parser("done")
    done.add_argument("index", type=int)
    args = parser.parse_args()
    items = store.load()
    if args.command == "add":
        items.append({"text": args.text, "done": False})
    elif args.command == "done":
        items[args.index]["done"] = True
    for i, item in enumerate(items):
        print(f"{i} [{'x' if item['done'] else ' '}] {item['text']}")
    store.save(items)


if __name__ == "__main__":
    main()
