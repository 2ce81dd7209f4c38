"""`rscf tenants keys create|revoke|list`: the gateway's API keys (stored hashed under the data dir, 0600).

The full key is printed once, at creation; afterwards only its key id exists anywhere
(`list` shows ids, tenants, roles and states, never a secret or a hash).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from cli.main import EXIT_BAD_INPUT, EXIT_OK, json_parent


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def cmd_create(args: argparse.Namespace) -> int:
    from gateway.apikeys import KeyAdminError, KeyStore

    try:
        record, key = KeyStore().create(args.tenant, args.role, args.name or "")
    except KeyAdminError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps({**record.public(), "api_key": key}))
    else:
        print(key)
        print(f"key id {record.key_id}, tenant {record.tenant}, role {record.role}: store the key now; "
              "it is not shown again (OAuth2: client_id = key id, client_secret = the key)", file=sys.stderr)
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from gateway.apikeys import KeyAdminError, KeyStore

    try:
        record = KeyStore().revoke(args.key_id)
    except KeyAdminError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(record.public()) if args.json else f"revoked {record.key_id} (tenant {record.tenant})")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from gateway.apikeys import KeyStore

    keys = KeyStore().list(args.tenant)
    if args.json:
        print(json.dumps([k.public() for k in keys]))
        return EXIT_OK
    print(f"{'key id':<17} {'tenant':<20} {'role':<9} {'created (UTC)':<20} {'revoked (UTC)':<20} name")
    for k in keys:
        print(f"{k.key_id:<17} {k.tenant:<20} {k.role:<9} {_when(k.created_at):<20} {_when(k.revoked_at):<20} {k.name}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    tenants = sub.add_parser("tenants", help="tenants' credentials for the gateway")
    tsub = tenants.add_subparsers(dest="tenants_command", required=True)
    keys = tsub.add_parser("keys", help="API keys: create, revoke, list")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("create", parents=[json_parent()], help="a new API key (printed once)")
    p.add_argument("--tenant", required=True, help="1-64 characters of A-Z a-z 0-9 _ -")
    p.add_argument("--role", default="tenant", choices=("tenant", "operator", "admin"),
                   help="operator/admin may post control events")
    p.add_argument("--name", help="a label for the key")
    p.set_defaults(func=cmd_create)
    p = ksub.add_parser("revoke", parents=[json_parent()], help="revoke a key (and the tokens issued for it)")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_revoke)
    p = ksub.add_parser("list", parents=[json_parent()], help="keys, without secrets")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_list)
