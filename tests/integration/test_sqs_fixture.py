"""The SQS test endpoint (moto's server) answers a send/receive/delete round trip."""

from __future__ import annotations

import json
from typing import Any


async def test_send_receive_delete_round_trip(sqs_client: Any, sqs_queue_url: str) -> None:
    sent = await sqs_client.send_message(
        QueueUrl=sqs_queue_url,
        MessageBody=json.dumps({"id": 1}),
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "order"}},
    )

    response = await sqs_client.receive_message(
        QueueUrl=sqs_queue_url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    messages = response.get("Messages", [])
    assert [m["MessageId"] for m in messages] == [sent["MessageId"]]
    message = messages[0]
    assert json.loads(message["Body"]) == {"id": 1}
    assert message["MessageAttributes"]["kind"]["StringValue"] == "order"
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"

    await sqs_client.delete_message(QueueUrl=sqs_queue_url, ReceiptHandle=message["ReceiptHandle"])
    attributes = await sqs_client.get_queue_attributes(
        QueueUrl=sqs_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"
    again = await sqs_client.receive_message(QueueUrl=sqs_queue_url, WaitTimeSeconds=0)
    assert again.get("Messages", []) == []


async def test_queues_are_unique_per_test(sqs_client: Any, sqs_queue_url: str) -> None:
    listed = await sqs_client.list_queues()
    assert sqs_queue_url in listed.get("QueueUrls", [])
    attributes = await sqs_client.get_queue_attributes(
        QueueUrl=sqs_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"
