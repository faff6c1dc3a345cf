#!/bin/bash
# cluster-env.sh — write /etc/vmdock-hadoop/cluster.env, the --env-file of every
# Hadoop container on this machine: hadoop/hadoop.env plus the addresses, taken from
# VMDOCK_IP_MASTER (the master's private address) and this machine's own address.
set -euo pipefail
: "${VMDOCK_IP_MASTER:?}" "${VMDOCK_MACHINE:?}"
var="VMDOCK_IP_${VMDOCK_MACHINE^^}"; var=${var//-/_}
self=${!var:?$var is not set}
mkdir -p /etc/vmdock-hadoop
{
    cat hadoop/hadoop.env
    echo
    echo "# --- addresses (cluster-env.sh on $VMDOCK_MACHINE)"
    echo "CORE-SITE.XML_fs.defaultFS=hdfs://$VMDOCK_IP_MASTER:8020"
    echo "CORE-SITE.XML_hadoop.http.staticuser.user=hadoop"
    echo "HDFS-SITE.XML_dfs.namenode.rpc-address=$VMDOCK_IP_MASTER:8020"
    echo "HDFS-SITE.XML_dfs.namenode.http-address=$VMDOCK_IP_MASTER:9870"
    echo "YARN-SITE.XML_yarn.resourcemanager.hostname=$VMDOCK_IP_MASTER"
    echo "YARN-SITE.XML_yarn.nodemanager.hostname=$self"
    echo "MAPRED-SITE.XML_mapreduce.jobhistory.address=$VMDOCK_IP_MASTER:10020"
    echo "MAPRED-SITE.XML_mapreduce.jobhistory.webapp.address=$VMDOCK_IP_MASTER:19888"
} > /etc/vmdock-hadoop/cluster.env.new
mv -f /etc/vmdock-hadoop/cluster.env.new /etc/vmdock-hadoop/cluster.env
chmod 0644 /etc/vmdock-hadoop/cluster.env
echo "/etc/vmdock-hadoop/cluster.env: $(grep -c '^[A-Z]' /etc/vmdock-hadoop/cluster.env) settings; addresses:"
sed -n '/^# --- addresses/,$p' /etc/vmdock-hadoop/cluster.env
