# The post's ventilator: 100 pickled (name, workload) tasks, then the end of the script.
import pickle
import random
import sys

import zmq

context = zmq.Context()
me = str(sys.argv[1])
socket = context.socket(zmq.PUSH)
socket.bind(sys.argv[2])
for _ in range(100):
    workload = random.randint(1, 100)
    socket.send(pickle.dumps((me, workload)))
