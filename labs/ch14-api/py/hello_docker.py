#!/usr/bin/python3
"""14.5.2 docker-py库编程: drive Docker from Python with the Docker SDK (docker-py).

docker.from_env() reads the same variables as the docker CLI:
  DOCKER_HOST=tcp://ADDRESS:2376   where the API listens
  DOCKER_TLS_VERIFY=1              use TLS and check the daemon's certificate
  DOCKER_CERT_PATH=DIR             ca.pem, cert.pem and key.pem (the client certificate)
Usage: hello_docker.py IMAGE
"""
import sys

import docker

image = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5000/ch14/hello:1.0"

client = docker.from_env()
print(f"connected to {client.api.base_url} (docker-py {docker.__version__})")
version = client.version()
print(f"daemon: Docker {version['Version']}, API {version['ApiVersion']}, {version['Os']}/{version['Arch']}")

# pull the image from the registry of 14.4 (the daemon pulls, the SDK asks)
repository, _, tag = image.rpartition(":")
pulled = client.images.pull(repository, tag=tag)
print(f"image {image}: {pulled.short_id}")

# run a container, wait for it, and return what it printed (like `docker run --rm`)
output = client.containers.run(image, remove=True, labels={"vmdock.created-through": "docker-py"})
print(output.decode().strip())

# the containers created through the REST API (14.3.1)
for c in client.containers.list(filters={"label": "vmdock.created-through"}):
    print(f"running: {c.name} {c.short_id} {c.status} created through {c.labels['vmdock.created-through']}")
