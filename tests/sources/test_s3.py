"""S3Source specifics on a real SeaweedFS: paging, dead/ and claim markers, arguments."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from tests.servers import SeaweedServer

pytest.importorskip("aiobotocore")

import pywork.sources.s3 as s3
from pywork import Job, Worker
from pywork.sources import S3Source


async def test_listing_pages_through_the_prefix_and_skips_dead_letters(
    s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiobotocore.session import get_session

    monkeypatch.setattr(s3, "PAGE_SIZE", 5)  # 13 objects: three pages per pass
    prefix = f"page-{uuid.uuid4().hex[:8]}/"
    bucket = s3_env.bucket
    async with get_session().create_client("s3", endpoint_url=s3_env.endpoint_url) as client:
        for i in range(13):
            await client.put_object(Bucket=bucket, Key=f"{prefix}{i:02d}.json", Body=b"%d" % i)
        await client.put_object(Bucket=bucket, Key=f"{prefix}dead/old.json", Body=b"-1")
        source = S3Source(bucket, prefix, endpoint_url=s3_env.endpoint_url, poll_interval=0.05)
        seen: list[int] = []
        markers: list[str] = []
        done = asyncio.Event()
        worker = Worker()

        @worker.handler("record")
        async def record(job: Job) -> None:
            if not markers:
                listed = await client.list_objects_v2(Bucket=bucket, Prefix=".pywork-claims/")
                markers.extend(o["Key"] for o in listed.get("Contents", ()))
            seen.append(job.args["received_data"])
            if len(seen) == 13:
                done.set()

        consuming = asyncio.create_task(worker.consume_source(source, Job("record")))
        try:
            await asyncio.wait_for(done.wait(), 20)
        finally:
            await worker.stop()
            await consuming
            await source.close()
        # Then every object ran once, the dead letter never, and claims lived outside prefix
        assert sorted(seen) == list(range(13))
        assert markers and all(m.startswith(".pywork-claims/" + prefix) for m in markers)
        listed = await client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        assert [o["Key"] for o in listed.get("Contents", ())] == [f"{prefix}dead/old.json"]
        with contextlib.suppress(Exception):
            await client.delete_object(Bucket=bucket, Key=f"{prefix}dead/old.json")


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="prefix"):
        S3Source("b", "")
    with pytest.raises(ValueError, match="claims_prefix"):
        S3Source("b", "jobs/", claims_prefix="jobs/claims/")
    with pytest.raises(ValueError, match="lease"):
        S3Source("b", "jobs/", lease=0)
    with pytest.raises(ValueError, match="prefetch"):
        S3Source("b", "jobs/", prefetch=0)
