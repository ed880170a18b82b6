#!/usr/bin/env python3
"""Seeds a fresh `ruststacker all` for scripts/schemathesis.sh and writes what points generated
calls at what it made: Meta's Schemathesis config (OUT_DIR/meta.toml) and the ids that
scripts/schemathesis_hooks.py puts into request bodies (OUT_DIR/seed.json).

Generated ids name nothing on a fresh server, so without this the group operations only ever
answer 404 and Schemathesis never reaches their logic. Each operation that uses up what it acts on
(dissolve, transfer, leave, join, ...) gets rooms of its own, so one operation's success does not
turn another's calls into 404s. The config binds each path parameter to a dictionary of real ids:
drawn with probability 0.8 (the rest stays generated, so unknown ids are still tried), and always
for the operations that use rooms up, whose generated ids would otherwise hit (dissolve, hand
over, empty) the rooms the other operations were given.

    schemathesis-seed.py META_URL SEND_URL OUT_DIR     (prints the user's token on stdout)
"""
import os
import json
import sys
import urllib.request

meta, send, out = sys.argv[1:4]
PASSWORD = "password-1"
PER_OPERATION = 6  # rooms per consuming operation: enough for every phase to succeed once


def call(base, method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method)
    if body is not None:
        req.data = json.dumps(body).encode()
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["data"]


def user(name):
    call(meta, "POST", "/api/user/register", {"username": name, "password": PASSWORD})
    d = call(meta, "POST", "/api/user/login", {"username": name, "password": PASSWORD})
    return d["user_id"], d["token"]


def groups(token, n, members=(), open_=False):
    return [
        call(meta, "POST", "/api/group/create",
             {"name": f"st-{i}", "member_ids": list(members), "open": open_}, token)["room_id"]
        for i in range(n)
    ]


# The user Schemathesis calls as (scripts/schemathesis.sh passes the token) and the others.
alice, alice_token = user("st_alice")
bob, bob_token = user("st_bob")
requesters = [user(f"st_req{i}") for i in range(4)]

# Room 1 (a group of both) and room 2 (their one-to-one room), with a message: the ids 1 and 2
# that examples and ordinary calls name.
first = groups(alice_token, 1, [bob])[0]
call(meta, "POST", "/api/room/direct", {"user_id": bob}, alice_token)
messages = [
    call(send, "POST", "/api/chat/send_message", {"room_id": first, "content": f"hello {i}"},
         alice_token)["message_id"]
    for i in range(3)
]

owned = [first] + groups(alice_token, PER_OPERATION, [bob])
doomed = groups(alice_token, PER_OPERATION, [bob])
handed = groups(alice_token, PER_OPERATION, [bob])
removal = groups(alice_token, PER_OPERATION, [bob])
leaving = groups(bob_token, PER_OPERATION, [alice])
joinable = groups(bob_token, PER_OPERATION, open_=True)
closed = groups(bob_token, PER_OPERATION)
decide_room = groups(alice_token, 1)[0]
request_ids = [
    call(meta, "POST", f"/api/group/{decide_room}/requests", {"message": "let me in"}, t)["request_id"]
    for _, t in requesters
]

dictionaries = {
    "owned": owned, "doomed": doomed, "handed": handed, "removal": removal, "leaving": leaving,
    "joinable": joinable, "closed": closed, "decide_room": [decide_room], "requests": request_ids,
    "member": [bob], "web_files": ["index.html", "app.js", "style.css", "index.js", "client.js"],
}
# (operation, {path parameter: dictionary})
bindings = [
    ("GET /api/group/{room_id}/members", {"room_id": "owned"}),
    ("POST /api/group/{room_id}/members", {"room_id": "owned"}),
    ("PUT /api/group/{room_id}/members/{user_id}/role", {"room_id": "owned", "user_id": "member"}),
    ("PUT /api/group/{room_id}/nickname", {"room_id": "owned"}),
    ("PUT /api/group/{room_id}/name", {"room_id": "owned"}),
    ("PUT /api/group/{room_id}/open", {"room_id": "owned"}),
    ("GET /api/group/{room_id}/requests", {"room_id": "owned"}),
    ("DELETE /api/group/{room_id}", {"room_id": "doomed"}),
    ("POST /api/group/{room_id}/transfer", {"room_id": "handed"}),
    ("DELETE /api/group/{room_id}/members/{user_id}", {"room_id": "removal", "user_id": "member"}),
    ("POST /api/group/{room_id}/leave", {"room_id": "leaving"}),
    ("POST /api/group/{room_id}/join", {"room_id": "joinable"}),
    ("POST /api/group/{room_id}/requests", {"room_id": "closed"}),
    ("POST /api/group/{room_id}/requests/{request_id}",
     {"room_id": "decide_room", "request_id": "requests"}),
    ("GET /web/{file}", {"file": "web_files"}),
]

lines = ["# Written by scripts/schemathesis-seed.py for one run; see scripts/schemathesis.sh.", ""]
for name, values in dictionaries.items():
    lines.append(f"[dictionaries.{name}]")
    lines.append(f"values = {json.dumps(values)}")
    lines.append("")
CONSUMING = {"doomed", "handed", "removal", "leaving"}
for op, params in bindings:
    lines.append("[[operations]]")
    lines.append(f"include-name = {json.dumps(op)}")
    p = 1.0 if CONSUMING & set(params.values()) else 0.8
    for param, dictionary in params.items():
        lines.append(f'parameters."path.{param}" = {{ dictionary = "{dictionary}", probability = {p} }}')
    lines.append("")
with open(os.path.join(out, "meta.toml"), "w") as f:
    f.write("\n".join(lines))
# Send's history reads a room by query: the rooms both users are in and that no operation of
# Meta's run uses up (Send's document runs first anyway).
with open(os.path.join(out, "send.toml"), "w") as f:
    f.write(f"""# Written by scripts/schemathesis-seed.py for one run; see scripts/schemathesis.sh.
[dictionaries.rooms]
values = {json.dumps(owned)}

[[operations]]
include-name = "GET /api/chat/history"
parameters."query.room_id" = {{ dictionary = "rooms", probability = 0.8 }}
""")
with open(os.path.join(out, "seed.json"), "w") as f:
    json.dump({"peer": bob, "room": first, "messages": messages}, f)
print(alice_token)
