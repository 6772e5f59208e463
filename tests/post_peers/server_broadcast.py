# The post's publisher, with the interval from argv[2] instead of 5 seconds.
import sys
import time

import zmq

context = zmq.Context()
socket = context.socket(zmq.PUB)
socket.bind(sys.argv[1])
while True:
    time.sleep(float(sys.argv[2]))
    socket.send_string("TIME" + time.asctime())
