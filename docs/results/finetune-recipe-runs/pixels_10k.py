import json
import time

from mimkit.data.config import DataConfig
from mimkit.data.sources import load_labelled_splits
from mimkit.eval.knn import knn_top1
from mimkit.eval.linear import ProbeSettings, linear_probe
from mimkit.plan import pixel_features

t=time.time()
x_tr,y_tr,x_te,y_te=load_labelled_splits(DataConfig(), 1, (28,28), 10000)
m,s=[0.2860],[0.3530]
f_tr,f_te=pixel_features(x_tr,m,s),pixel_features(x_te,m,s)
out={}
for seed in (0,1):
    r=linear_probe(f_tr,y_tr,f_te,y_te,lrs=(0.01,0.03,0.1,0.3,1.0),settings=ProbeSettings(epochs=100,batch_size=128,seed=seed))
    out[f'linear_seed{seed}']=(r.top1,r.lr)
out['knn']=knn_top1(f_tr,y_tr,f_te,y_te,k=20,temperature=0.07)
out['seconds']=time.time()-t
print(json.dumps(out))
