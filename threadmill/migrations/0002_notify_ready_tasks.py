"""On PostgreSQL, NOTIFY idle workers whenever a task becomes READY (a no-op elsewhere)."""

from django.db import migrations

CREATE = [
    """
CREATE OR REPLACE FUNCTION threadmill_notify_ready() RETURNS trigger AS $$
BEGIN
    -- Identical notifications of one transaction are delivered once: a batch wakes once.
    PERFORM pg_notify('threadmill', NEW.backend || '/' || NEW.queue_name);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
""",
    """
CREATE TRIGGER threadmill_task_inserted AFTER INSERT ON threadmill_task
    FOR EACH ROW WHEN (NEW.status = 'READY') EXECUTE FUNCTION threadmill_notify_ready()
""",
    """
CREATE TRIGGER threadmill_task_readied AFTER UPDATE OF status ON threadmill_task
    FOR EACH ROW WHEN (NEW.status = 'READY' AND OLD.status <> 'READY')
    EXECUTE FUNCTION threadmill_notify_ready()
""",
]

DROP = [
    "DROP TRIGGER IF EXISTS threadmill_task_readied ON threadmill_task",
    "DROP TRIGGER IF EXISTS threadmill_task_inserted ON threadmill_task",
    "DROP FUNCTION IF EXISTS threadmill_notify_ready()",
]


def create_triggers(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for statement in CREATE:
            schema_editor.execute(statement, params=None)


def drop_triggers(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for statement in DROP:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [("threadmill", "0001_initial")]

    operations = [migrations.RunPython(create_triggers, drop_triggers, elidable=False)]
