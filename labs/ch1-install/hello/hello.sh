#!/bin/sh
# What the vmdock "hello" container prints (after Docker's hello-world image).
cat <<MSG

Hello from Docker! (vmdock ch1-install: a local image, built FROM debian:bookworm)
This message shows that your installation appears to be working correctly.

To generate this message, Docker took the following steps:
 1. The Docker client contacted the Docker daemon.
 2. The Docker daemon found the image "vmdock/ch1-hello" in its local image store
    (it was built there with docker build; nothing was pulled from a registry).
 3. The Docker daemon created a new container from that image, which runs the
    executable that produces the output you are currently reading.
 4. The Docker daemon streamed that output to the Docker client, which sent it
    to your terminal.

Inside the container: hostname $(hostname), Debian $(cat /etc/debian_version), kernel $(uname -r) (the VM's kernel: containers share it), PID $$.
MSG
