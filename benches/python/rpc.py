"""The Python rows of the rpc bench (benches/benches/rpc.rs).

  rpc.py serve            Python's SimpleXMLRPCServer offering add(a, b); prints its port.
  rpc.py client URL       xmlrpc.client against URL: for each line "n" read on stdin, calls
                          add(5, 3) n times and prints "done"; ends at the end of stdin.
"""

import sys
import xmlrpc.client
from xmlrpc.server import SimpleXMLRPCServer


def serve():
    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
    server.register_function(lambda a, b: a + b, "add")
    print(server.server_address[1], flush=True)
    server.serve_forever()


def client(url):
    proxy = xmlrpc.client.ServerProxy(url)
    for line in sys.stdin:
        for _ in range(int(line)):
            if proxy.add(5, 3) != 8:
                sys.exit("add(5, 3) is not 8")
        print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        client(sys.argv[2])
