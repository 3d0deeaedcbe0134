from django.apps import AppConfig


class ThreadmillConfig(AppConfig):
    name = "threadmill"
    verbose_name = "threadmill"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
