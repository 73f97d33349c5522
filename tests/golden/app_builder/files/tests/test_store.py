from todo import store


def test_round_trip(tmp_path):
    path = tmp_path / "todo.json"
    store.save([{"text": "milk", "done": False}], path)
    assert store.load(path) == [{"text": "milk", "done": False}]
