from tests.analysis.conftest import fake_ai, fake_ai_server, start_worker, worker_settings

__all__ = ["fake_ai", "fake_ai_server", "start_worker", "worker_settings"]
