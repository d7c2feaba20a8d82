"""A parking partner adapter in Python: parking.v1.ParkingPayment with grpcio.

The proof that a partner can be written in any language: it passes `partner-kit check` as the
Rust reference adapter (adapters/parking) does. It follows docs/partners.md point by point:

- mutual TLS: it requires a client certificate, trusts only the CA it is given
  (gateway-clients-ca.pem) and, on every call, checks that the caller's certificate has exactly
  one OU, gateway-client, and one CN (PERMISSION_DENIED otherwise);
- the car is the x-vehicle-vin metadata, never the request body; every session belongs to the
  VIN that started it, and other cars get NOT_FOUND;
- StartSession and EndSession are deduplicated on (x-vehicle-vin, idempotency-key): a retry
  gets the first answer again, byte for byte, and is never charged twice;
- the deadline is context.time_remaining() (grpcio hides grpc-timeout from the metadata): no
  side effect once it has passed, and grpcio answers DEADLINE_EXCEEDED by itself;
- errors per the contract: NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION.

The stubs are generated from proto/proto at startup with grpc_tools.protoc, into a temporary
directory: no generated code is committed.

    python parking_adapter.py --listen 127.0.0.1:50062 --cert parking.pem --key parking.key \
        --client-ca gateway-clients-ca.pem

It prints "python parking adapter listening on HOST:PORT" on stdout once it serves (with
--listen 127.0.0.1:0, the port the system chose).
"""

import argparse
import atexit
import concurrent.futures
import importlib
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.join(HERE, "..", "..", "proto", "proto")

VIN = "x-vehicle-vin"
REQUEST_ID = "x-request-id"
IDEMPOTENCY_KEY = "idempotency-key"

CURRENCY = "CNY"
MAX_PLATE_CHARS = 16
DEFAULT_RADIUS_M = 2000
DEFAULT_MAX_RESULTS = 10
MAX_RESULTS = 50
# How long an answer is remembered for its idempotency key; the gateway's ledger keeps 24 h.
REMEMBER_SECONDS = 24 * 60 * 60
# Bound on remembered answers, so that no caller can grow the adapter without limit.
MAX_REMEMBERED = 100_000

# (id, name, latitude, longitude, price per hour in fen, free spaces)
LOTS = [
    ("py-lot-peoplessquare", "People's Square Car Park (Python)", 31.2317, 121.4726, 1200, 40),
    ("py-lot-bund", "Bund Riverside Garage (Python)", 31.2380, 121.4900, 2500, 12),
    ("py-lot-jingan", "Jing'an Temple Car Park (Python)", 31.2235, 121.4454, 1500, 25),
]


def load_stubs(proto_dir):
    """Generates parking.v1's Python stubs into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="parking-stubs-")
    atexit.register(shutil.rmtree, out, True)
    proto = os.path.join("parking", "v1", "parking.proto")
    code = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", proto]
    )
    if code != 0:
        sys.exit(f"cannot generate the stubs from {os.path.join(proto_dir, proto)} (protoc exit {code})")
    sys.path.insert(0, out)
    return (
        importlib.import_module("parking.v1.parking_pb2"),
        importlib.import_module("parking.v1.parking_pb2_grpc"),
    )


def distance_m(lat1, lon1, lat2, lon2):
    """Great-circle distance (haversine), in metres."""
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def caller_role_error(context):
    """None if the caller's certificate is the gateway's (one OU, gateway-client; one CN)."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return "no client certificate"
    try:
        subject = x509.load_pem_x509_certificate(pems[0]).subject
    except ValueError as e:
        return f"unreadable client certificate: {e}"
    ous = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    cns = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    # Two OUs or two CNs are refused rather than reading the first.
    if ous != ["gateway-client"] or len(cns) != 1:
        return f"only the gateway may call this adapter: certificate OU={ous}, CN={cns}"
    return None


class Parking:
    """The service's state; one lock makes "check the key, act, remember the answer" atomic."""

    def __init__(self, pb):
        self.pb = pb
        self.lock = threading.Lock()
        self.sessions = {}  # session id -> {"vin", "lot", "session", "receipt"}
        self.active_by_vin = {}  # VIN -> session id
        self.remembered = {}  # (VIN, key) -> (method, request bytes, response bytes, at)
        self.started = 0
        self.charges = 0


def make_servicer(pb, pb_grpc):
    class ParkingPayment(pb_grpc.ParkingPaymentServicer):
        def __init__(self):
            self.state = Parking(pb)

        # -- what every call goes through -------------------------------------------------

        def _caller(self, context):
            """The role check, then the caller's metadata: (VIN or None, key or None)."""
            problem = caller_role_error(context)
            if problem:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
            metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            vin = metadata.get(VIN, "").strip() or None
            key = metadata.get(IDEMPOTENCY_KEY, "").strip() or None
            return vin, key

        def _require_vin(self, vin, context):
            if vin is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{VIN} metadata is missing")
            return vin

        def _before_acting(self, context):
            """No side effect once the car's deadline has passed: the car was already told."""
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the work started")

        def _once_per_key(self, method, request, context, act):
            """Runs act(vin) once per (VIN, key); a retry gets the remembered answer back."""
            vin, key = self._caller(context)
            vin = self._require_vin(vin, context)
            request_bytes = request.SerializeToString(deterministic=True)
            state = self.state
            with state.lock:
                now = time.time()
                if key is not None:
                    seen = state.remembered.get((vin, key))
                    if seen and now - seen[3] < REMEMBER_SECONDS:
                        if seen[0] != method or seen[1] != request_bytes:
                            context.abort(
                                grpc.StatusCode.FAILED_PRECONDITION,
                                "idempotency key reused with a different request",
                            )
                        return seen[2]
                self._before_acting(context)
                response = act(vin, now)
                if key is not None:
                    if len(state.remembered) >= MAX_REMEMBERED:
                        self._forget_oldest(now)
                    state.remembered[(vin, key)] = (method, request_bytes, response, now)
                return response

        def _forget_oldest(self, now):
            remembered = self.state.remembered
            for k in [k for k, v in remembered.items() if now - v[3] >= REMEMBER_SECONDS]:
                del remembered[k]
            while len(remembered) >= MAX_REMEMBERED:
                del remembered[next(iter(remembered))]

        # -- the methods ----------------------------------------------------------------

        def ListNearbyLots(self, request, context):
            self._caller(context)  # lots are public: no VIN needed, but only the gateway calls
            if not request.HasField("near"):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "near is required")
            lat, lon = request.near.latitude, request.near.longitude
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "near must have latitude within ±90 and longitude within ±180",
                )
            radius = request.radius_m or DEFAULT_RADIUS_M
            limit = min(request.max_results or DEFAULT_MAX_RESULTS, MAX_RESULTS)
            found = sorted(
                (distance_m(lat, lon, l[2], l[3]), l) for l in LOTS if distance_m(lat, lon, l[2], l[3]) <= radius
            )
            return pb.ListNearbyLotsResponse(
                lots=[
                    pb.Lot(
                        lot_id=l[0],
                        name=l[1],
                        location=pb.GeoPoint(latitude=l[2], longitude=l[3]),
                        distance_m=int(d),
                        price_per_hour=pb.Money(currency=CURRENCY, amount_minor=l[4]),
                        free_spaces=l[5],
                    )
                    for d, l in found[:limit]
                ]
            )

        def StartSession(self, request, context):
            def start(vin, now):
                plate = request.plate.strip()
                if not plate:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "plate is required")
                if len(plate) > MAX_PLATE_CHARS:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"plate is longer than {MAX_PLATE_CHARS} characters")
                if not request.lot_id:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "lot_id is required")
                lot = next((l for l in LOTS if l[0] == request.lot_id), None)
                if lot is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"no lot {request.lot_id!r}")
                state = self.state
                if vin in state.active_by_vin:
                    context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"vehicle already has an active parking session {state.active_by_vin[vin]}; end it first",
                    )
                state.started += 1
                session = pb.ParkingSession(
                    session_id=f"py-ps-{state.started}",
                    lot_id=lot[0],
                    plate=plate,
                    state=pb.SESSION_STATE_ACTIVE,
                    started_at_unix_ms=int(now * 1000),
                )
                state.active_by_vin[vin] = session.session_id
                state.sessions[session.session_id] = {"vin": vin, "lot": lot, "session": session, "receipt": None}
                return pb.StartSessionResponse(session=session).SerializeToString()

            return pb.StartSessionResponse.FromString(self._once_per_key("StartSession", request, context, start))

        def EndSession(self, request, context):
            def end(vin, now):
                if not request.session_id:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
                state = self.state
                record = state.sessions.get(request.session_id)
                # Another car's session is reported exactly like a missing one.
                if record is None or record["vin"] != vin:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id!r}")
                session = record["session"]
                if record["receipt"] is None:
                    ended = max(int(now * 1000), session.started_at_unix_ms)
                    hours = max(1, math.ceil((ended - session.started_at_unix_ms) / 3_600_000))
                    fee = pb.Money(currency=CURRENCY, amount_minor=record["lot"][4] * hours)
                    # Where a real adapter calls its payment provider, passing the key on.
                    state.charges += 1
                    session.state = pb.SESSION_STATE_ENDED
                    session.ended_at_unix_ms = ended
                    session.fee.CopyFrom(fee)
                    record["receipt"] = pb.Receipt(
                        receipt_id=f"py-rcpt-{state.charges}",
                        session_id=session.session_id,
                        lot_name=record["lot"][1],
                        started_at_unix_ms=session.started_at_unix_ms,
                        ended_at_unix_ms=ended,
                        duration_s=(ended - session.started_at_unix_ms) // 1000,
                        fee=fee,
                        payment_reference=f"py-pay-{state.charges}",
                    )
                    state.active_by_vin.pop(vin, None)
                # An ended session answers what it answered the first time, whatever the key.
                return pb.EndSessionResponse(session=session, receipt=record["receipt"]).SerializeToString()

            return pb.EndSessionResponse.FromString(self._once_per_key("EndSession", request, context, end))

        def GetReceipt(self, request, context):
            vin, _ = self._caller(context)
            vin = self._require_vin(vin, context)
            if not request.receipt_id:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "receipt_id is required")
            with self.state.lock:
                for record in self.state.sessions.values():
                    receipt = record["receipt"]
                    if record["vin"] == vin and receipt is not None and receipt.receipt_id == request.receipt_id:
                        return receipt
            context.abort(grpc.StatusCode.NOT_FOUND, f"no receipt {request.receipt_id!r}")

    return ParkingPayment()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:50062", help="host:port (port 0: any free port)")
    parser.add_argument("--cert", required=True, help="PEM: the adapter's certificate, then its issuing CA")
    parser.add_argument("--key", required=True, help="PEM: its private key")
    parser.add_argument(
        "--client-ca", required=True, help="PEM: the CA of the gateway's client certificate (gateway-clients-ca.pem)"
    )
    parser.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR, help="where parking/v1/parking.proto is")
    args = parser.parse_args()

    try:
        with open(args.cert, "rb") as f:
            cert = f.read()
        with open(args.key, "rb") as f:
            key = f.read()
        with open(args.client_ca, "rb") as f:
            client_ca = f.read()
    except OSError as e:
        print(f"parking_adapter.py: {e}", file=sys.stderr)
        sys.exit(64)

    pb, pb_grpc = load_stubs(args.proto_dir)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=8),
        # Bounds what one call can make the adapter read.
        options=[("grpc.max_receive_message_length", 64 * 1024)],
    )
    pb_grpc.add_ParkingPaymentServicer_to_server(make_servicer(pb, pb_grpc), server)
    credentials = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=True
    )
    port = server.add_secure_port(args.listen, credentials)
    if port == 0:
        print(f"parking_adapter.py: cannot listen on {args.listen}", file=sys.stderr)
        sys.exit(64)
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"python parking adapter listening on {host}:{port} (mTLS)", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()


if __name__ == "__main__":
    main()
