# The post's request-reply client: one request, print the reply, send STOP and fall off the end.
import sys

import zmq

context = zmq.Context()
socket = context.socket(zmq.REQ)
socket.connect(sys.argv[1])
socket.send(b"Hello world 1")
message = socket.recv()
socket.send_string("STOP")
print(message)
