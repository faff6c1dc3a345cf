#!/bin/sh
# What a container of the ch3 app image prints.
echo "vmdock ch3 app, version $(cat "${APP_HOME:-/opt/app}/version.txt"), running as $(id -un) in $(hostname)"
