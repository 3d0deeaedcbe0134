"""The PostgreSQL database both database backends run on: the same settings for each.

run.py starts a throw-away server (tests.servers.PostgresServer, durable settings) per
measurement and passes its connection fields in BENCH_POSTGRES, as JSON.
"""

import json
import os


def databases() -> dict:
    fields = json.loads(os.environ.get("BENCH_POSTGRES", "{}"))
    return {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": fields.get("NAME", "threadmill"),
            "USER": fields.get("USER", "postgres"),
            "HOST": fields.get("HOST", "127.0.0.1"),
            "PORT": fields.get("PORT", "5432"),
        }
    }
