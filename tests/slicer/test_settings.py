"""Backend settings and server history, persisted in a QSettings-like store."""

from __future__ import annotations

import pytest
from ClaraAnnotateLib.settings import (
    MAX_HISTORY,
    PREFIX,
    BackendSettings,
    DictStore,
    normalize_url,
    push_history,
)

from claraseg.errors import ConfigError


def test_normalize_url():
    assert normalize_url("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert normalize_url(" https://clara.example.org/api/ ") == "https://clara.example.org/api"
    for bad in ("", "ftp://x", "http://", "http://host:99999"):
        with pytest.raises(ConfigError):
            normalize_url(bad)


def test_history_is_most_recent_first_without_duplicates():
    h = []
    for u in ["a", "b", "a", "c"]:
        h = push_history(h, u)
    assert h == ["c", "a", "b"]
    assert len(push_history([str(i) for i in range(20)], "new")) == MAX_HISTORY


def test_save_and_load_round_trip_and_token_only_when_asked():
    store = DictStore()
    s = BackendSettings(mode="remote", url="10.0.0.5:8000", token="secret")
    s.save(store)
    assert store.value(PREFIX + "token") == ""  # not remembered by default
    loaded = BackendSettings.load(store)
    assert (loaded.mode, loaded.url, loaded.token) == ("remote", "http://10.0.0.5:8000", "")
    assert loaded.history == ["http://10.0.0.5:8000"]
    loaded.url, loaded.token, loaded.remember_token = "http://other:1", "t2", True
    loaded.save(store)
    again = BackendSettings.load(store)
    assert again.token == "t2" and again.history == ["http://other:1", "http://10.0.0.5:8000"]


def test_load_tolerates_qsettings_strings_and_garbage():
    store = DictStore({PREFIX + "mode": "bogus", PREFIX + "rememberToken": "true", PREFIX + "token": "x",
                       PREFIX + "history": "not json"})
    s = BackendSettings.load(store)
    assert s.mode == "local" and s.remember_token and s.token == "x" and s.history == []
    with pytest.raises(ConfigError, match="mode"):
        BackendSettings(mode="cloud").validate()
    with pytest.raises(ConfigError, match="server address"):
        BackendSettings(mode="remote", url="ftp://x").validate()


def test_models_dir_defaults_to_the_users_folder_and_persists(monkeypatch, tmp_path):
    from ClaraAnnotateLib.settings import default_models_dir

    monkeypatch.delenv("CLARASEG_USER_MODELS", raising=False)
    assert default_models_dir().endswith(".claraseg/models")
    monkeypatch.setenv("CLARASEG_USER_MODELS", str(tmp_path))
    assert BackendSettings().models_dir == str(tmp_path)
    store = DictStore()
    BackendSettings(models_dir="/data/models").save(store)
    assert BackendSettings.load(store).models_dir == "/data/models"
