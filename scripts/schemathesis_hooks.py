"""Schemathesis hooks for scripts/schemathesis.sh: request bodies that name a user, a room or a
message get, in half of the generated cases, an id that scripts/schemathesis-seed.py made (read from the
file in ST_SEED). The path ids are bound in the config; bodies cannot be, and a generated id
names nothing, so without this these operations never get past their 404 (or the caller's own
id, which they refuse with a 400)."""
import json
import os

import schemathesis
from hypothesis import strategies as st

with open(os.environ["ST_SEED"]) as f:
    SEED = json.load(f)

# operation -> (body field, strategy for a value that names something real)
FILL = {
    "POST /api/group/{room_id}/transfer": ("user_id", st.just(SEED["peer"])),
    "POST /api/room/direct": ("user_id", st.just(SEED["peer"])),
    "POST /api/group/{room_id}/members": ("member_ids", st.just([SEED["peer"]])),
    "POST /api/chat/resend_message": ("message_id", st.sampled_from(SEED["messages"])),
    "POST /api/chat/send_message": ("room_id", st.just(SEED["room"])),
}


@schemathesis.hook
def before_generate_body(context, strategy):
    fill = FILL.get(context.operation.label) if context.operation is not None else None
    if fill is None:
        return strategy
    field, value = fill

    def with_seed(body, v):
        return {**body, field: v} if isinstance(body, dict) else body

    return st.one_of(strategy, st.tuples(strategy, value).map(lambda p: with_seed(*p)))
