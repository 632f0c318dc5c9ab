// The denoise candidates on one photo with Gaussian noise (sigma 20), one thread, as
// BENCHMARKS.md "New filters" reports them: time per frame and PSNR against the clean photo.
//
//   g++ -O2 -o /tmp/dn benches/denoise-candidates.cpp $(pkg-config --cflags --libs opencv4)
//   /tmp/dn 1280 720 assets/astronaut.jpg
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/photo.hpp>
#include <opencv2/imgcodecs.hpp>
#include <chrono>
#include <cstdio>
using namespace cv;
static double psnr(const Mat&a,const Mat&b){return PSNR(a,b);}
int main(int argc,char**argv){
  cv::setNumThreads(1);
  int w=atoi(argv[1]),h=atoi(argv[2]);
  Mat clean; resize(imread(argv[3]),clean,Size(w,h),0,0,INTER_AREA);
  Mat noise(h,w,CV_8UC3),noisy; randn(noise,0,20); Mat n16; clean.convertTo(n16,CV_16SC3); Mat nn; noise.convertTo(nn,CV_16SC3); randn(nn,0,20); add(n16,nn,n16); n16.convertTo(noisy,CV_8UC3);
  auto bench=[&](const char*name,auto f){Mat out; f(noisy,out); auto t0=std::chrono::steady_clock::now(); int n=5; for(int i=0;i<n;i++) f(noisy,out); double ms=std::chrono::duration<double,std::milli>(std::chrono::steady_clock::now()-t0).count()/n; printf("%-34s %8.1f ms/frame  PSNR %.2f dB (noisy %.2f)\n",name,ms,psnr(out,clean),psnr(noisy,clean));};
  bench("bilateral d=5 sc=30 ss=5",[](Mat&i,Mat&o){bilateralFilter(i,o,5,30,5);});
  bench("bilateral d=9 sc=40 ss=9",[](Mat&i,Mat&o){bilateralFilter(i,o,9,40,9);});
  bench("median 5",[](Mat&i,Mat&o){medianBlur(i,o,5);});
  bench("gaussian 5 (not edge-preserving)",[](Mat&i,Mat&o){GaussianBlur(i,o,Size(5,5),0);});
  bench("fastNlMeansColored h=10 t=7 s=21",[](Mat&i,Mat&o){fastNlMeansDenoisingColored(i,o,10,10,7,21);});
  bench("fastNlMeansColored h=10 t=3 s=7",[](Mat&i,Mat&o){fastNlMeansDenoisingColored(i,o,10,10,3,7);});
}
