"""The shop's background work: the kinds of task a real project runs."""

import hashlib
import random
import time
from datetime import timedelta

from django.tasks import TaskContext, task

from threadmill.retry import ExponentialBackoff


class PaymentDeclined(Exception):
    """The card was declined: a business failure, not worth retrying."""


class MailServerBusy(Exception):
    """The mail server asked us to come back later: worth retrying."""


@task
def make_thumbnail(image_id: int, size: int = 128) -> str:
    """CPU-bound: hash the 'pixels' of an image many times, as resizing would burn CPU."""
    digest = str(image_id).encode()
    for _ in range(20_000):
        digest = hashlib.sha256(digest).digest()
    return f"thumb-{image_id}-{size}-{digest.hex()[:8]}"


@task
def fetch_exchange_rate(currency: str) -> float:
    """I/O-bound: waits on a (simulated) remote service, leaving the CPU to other tasks."""
    time.sleep(random.uniform(0.02, 0.08))
    return round(random.uniform(0.8, 1.2), 4)


@task
def charge_card(order_id: int, amount_cents: int) -> str:
    """Fails for some orders, as real payments do: the task ends FAILED with the reason."""
    if order_id % 10 == 7:
        raise PaymentDeclined(f"card of order {order_id} declined")
    return f"charged {amount_cents} cents for order {order_id}"


@task(
    queue_name="emails",
    takes_context=True,
    retry=ExponentialBackoff(
        base_delay=timedelta(milliseconds=200),
        max_retries=3,
        expected_exceptions=[MailServerBusy],
    ),
)
def send_receipt(context: TaskContext, order_id: int) -> str:
    """Retries: the mail server is busy on the first attempt for a third of the orders."""
    if order_id % 3 == 0 and context.attempt == 1:
        raise MailServerBusy("451 try again later")
    return f"receipt for order {order_id} sent on attempt {context.attempt}"


@task(priority=10)
def nightly_report(day: str) -> dict:
    """Scheduled: enqueued with run_after, it runs once it is due."""
    return {"day": day, "status": "compiled"}
