"""The S3 server (moto): how to start it, whether it answers, and the bucket the project uses."""

from __future__ import annotations

from typing import Any

from local_stack.stacks import (
    HOST,
    S3_ACCESS_KEY_ID,
    S3_BUCKET,
    S3_REGION,
    S3_SECRET_ACCESS_KEY,
    Service,
    ServicesError,
    Stack,
    child_env,
    local_url,
    venv_executable,
)


def moto_service(stack: Stack, port: int) -> Service:
    argv = [venv_executable("moto_server"), "-H", HOST, "-p", str(port)]
    return Service("moto", port, argv, child_env({}), moto_answers, stack)


def s3_client(port: int) -> Any:  # a botocore S3 client; boto3 is imported lazily (slow)
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=local_url(port),
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        # Health checks poll: fail fast instead of botocore's retries and 60 s timeouts.
        config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
    )


def moto_answers(port: int) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client(port).list_buckets()
    except (BotoCoreError, ClientError):
        return False
    return True


def ensure_bucket(port: int) -> str:
    from botocore.exceptions import ClientError

    client = s3_client(port)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    if S3_BUCKET in existing:
        return f"bucket {S3_BUCKET}: exists"
    try:
        client.create_bucket(Bucket=S3_BUCKET)
    except ClientError as exc:
        # Created meanwhile by someone else (the lock only covers this checkout): fine.
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise ServicesError(f"creating bucket {S3_BUCKET} failed: {exc}") from exc
    return f"bucket {S3_BUCKET}: created"
