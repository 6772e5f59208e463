# The post's worker: print every task it pulls, for ever. It sends no results.
import pickle
import sys

import zmq

context = zmq.Context()
me = str(sys.argv[1])
receiver = context.socket(zmq.PULL)
receiver.connect(sys.argv[2])
while True:
    work = pickle.loads(receiver.recv())
    print(work)
