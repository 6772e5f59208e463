# The post's subscriber: five TIME messages, printed as bytes.
import sys

import zmq

context = zmq.Context()
socket = context.socket(zmq.SUB)
socket.connect(sys.argv[1])
socket.setsockopt_string(zmq.SUBSCRIBE, "TIME")
for _ in range(5):
    message = socket.recv()
    print(message)
