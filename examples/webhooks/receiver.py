"""A webhook receiver for Tandem: verifies each message with the Standard Webhooks library
(`pip install standardwebhooks`), drops the ones it already handled (delivery is at least
once), and prints the rest.

    WEBHOOK_SECRET=whsec_... python3 examples/webhooks/receiver.py 9000
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

hook = Webhook(os.environ["WEBHOOK_SECRET"])
handled = set()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            message = hook.verify(body, dict(self.headers))
        except WebhookVerificationError as err:
            self.send_response(400)
            self.end_headers()
            print("refused:", err, flush=True)
            return
        # Answer 2xx quickly; a non-2xx answer (or none within the timeout) is retried.
        self.send_response(204)
        self.end_headers()
        message_id = self.headers["webhook-id"]
        if message_id in handled:
            return
        handled.add(message_id)
        print(message["type"], json.dumps(message["data"]), flush=True)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1] if len(sys.argv) > 1 else 9000)), Receiver).serve_forever()
