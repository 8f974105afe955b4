# Shell helpers the bench scripts share (sourced, not run).

# A free loopback TCP port: bound, then released for a server about to start.
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
