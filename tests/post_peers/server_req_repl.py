# The post's request-reply server: replies request + b"*" and stops, without replying, on STOP.
import sys

import zmq

context = zmq.Context()
socket = context.socket(zmq.REP)
socket.bind(sys.argv[1])
while True:
    message = socket.recv()
    print(message + b"*")
    if b"STOP" in message:
        break
    socket.send(message + b"*")
