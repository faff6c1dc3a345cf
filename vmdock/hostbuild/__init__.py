"""What vmdock builds on the host, offline, one module per job.

* ``fsutil``: the one file lock, atomic JSON write, sidecar and build-folder
  cleanup every builder shares.
* ``debootstrap``: debootstrap, isolated in namespaces of its own.
* ``rootfs``: the cached minbase rootfs tarball (the labs' base image).
* ``machine_image``: the docker provider's machine image.
* ``boxes``: the box catalog (``boxes/boxes.yaml``); ``box_image``: the
  libvirt box vmdock builds itself.
* ``hostfacts``: what vmdock learnt about this host (``host-facts.json``),
  and the KVM probe.
* ``mirror``: ``file://`` Debian mirrors, served to builds and mounted into
  docker-provider machines.
"""
